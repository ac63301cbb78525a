// Two agents in two pages of headless Chromium: A sets "away" with a reason,
// B's board shows it as text (not only colour). Screenshots go to $ARTIFACTS.
//   usage: node desk.mjs BASE_URL   env: A_EXT A_PW B_EXT B_PW ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const artifacts = env("ARTIFACTS");
const browser = await launch();
const failures = [];
try {
  const page = (who) => login(browser, base, env(`${who}_EXT`), env(`${who}_PW`), failures);
  const a = await page("A");
  const b = await page("B");
  const rowOf = (p, ext) => p.locator(`li.agent[data-extension="${ext}"]`);

  // Keyboard only: choose the reason and press Away.
  await a.getByLabel("Reason for away").selectOption("meeting");
  await a.getByRole("button", { name: "Away", exact: true }).focus();
  await a.keyboard.press("Enter");

  const row = rowOf(b, env("A_EXT"));
  await row.locator(".state-label", { hasText: "Away" }).waitFor({ timeout: 5000 });
  await row.getByText("meeting").waitFor();
  await a.getByRole("button", { name: "Away", exact: true }).and(a.locator('[aria-pressed="true"]')).waitFor();
  await a.screenshot({ path: `${artifacts}/agent-a-away.png` });
  await b.screenshot({ path: `${artifacts}/agent-b-board.png` });

  // Back to available: B sees it again, without a reload.
  await a.getByRole("button", { name: "Available", exact: true }).click();
  await row.locator(".state-label", { hasText: "Available" }).waitFor({ timeout: 5000 });
  if (await row.getByText("meeting").count() !== 0) failures.push("the reason stayed after leaving away");

  // An agent cannot be anyone else: the API refuses, the page says why.
  const refused = await b.evaluate(async (ext) => {
    const r = await fetch(`/api/v1/agents/${ext}/state`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ state: "busy" }),
    });
    return r.status;
  }, env("A_EXT"));
  if (refused !== 403) failures.push(`setting another agent's state gave ${refused}, not 403`);

  // Call forwarding from the desktop: a number that leads nowhere is refused
  // with the reason; a colleague's extension is saved and summarised.
  await a.locator("#fwd-edit summary").click();
  await a.getByLabel("When not answered, to").fill("99999");
  await a.getByRole("button", { name: "Save forwarding" }).click();
  await a.getByText("Not saved: 99999 is not a number this PBX can reach").waitFor({ timeout: 5000 });
  await a.getByLabel("When not answered, to").fill(env("B_EXT"));
  await a.getByLabel("after (seconds, 0 = 20)").fill("15");
  await a.getByRole("button", { name: "Save forwarding" }).click();
  await a.getByText(`Forwarded: when not answered within 15 s to ${env("B_EXT")}.`).waitFor({ timeout: 5000 });
  await a.screenshot({ path: `${artifacts}/agent-a-forwarding.png` });
  await a.reload();
  await a.getByText(`Forwarded: when not answered within 15 s to ${env("B_EXT")}.`).waitFor({ timeout: 5000 });
} catch (e) {
  failures.push(String(e && e.stack || e));
} finally {
  await browser.close();
}
finish("desk browser test", failures);
