// Two agents in two pages of headless Chromium: A sets "away" with a reason,
// B's board shows it as text (not only colour). Screenshots go to $ARTIFACTS.
//   usage: node desk.mjs BASE_URL   env: A_EXT A_PW B_EXT B_PW ARTIFACTS
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const base = process.argv[2];
const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} missing`); return v; };
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const failures = [];
browser.on("disconnected", () => {});
try {
  const page = async (who) => {
    const ctx = await browser.newContext({ viewport: { width: 1366, height: 768 } });
    const p = await ctx.newPage();
    p.on("pageerror", (e) => failures.push(`${who}: page error ${e.message}`));
    p.on("requestfailed", (r) => { if (!r.url().startsWith(base)) failures.push(`${who}: outside request ${r.url()}`); });
    p.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("ws://")) failures.push(`${who}: outside request ${r.url()}`); });
    await p.goto(base + "/");
    await p.getByLabel("Extension", { exact: true }).fill(env(`${who}_EXT`));
    await p.getByLabel("Password", { exact: true }).fill(env(`${who}_PW`));
    await p.getByRole("button", { name: "Log in" }).click();
    await p.getByRole("heading", { name: "Presence board" }).waitFor();
    await p.getByText("Live.").waitFor();
    return p;
  };
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
} catch (e) {
  failures.push(String(e && e.stack || e));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log("desk browser test: ok");
