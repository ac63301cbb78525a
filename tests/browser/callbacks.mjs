// The call-back box in three pages of headless Chromium: A writes a call-back
// to group G; B and C see "G" light up (with text); B claims it, C sees it in
// progress by B; B closes it as succeeded: it leaves both lists and appears in
// the customer's history.
//   usage: node callbacks.mjs BASE_URL   env: A_EXT B_EXT C_EXT (password pw + digits) GROUP ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const artifacts = env("ARTIFACTS");
const browser = await launch();
const failures = [];
const pw = (ext) => ext.replace("user", "pw");
try {
  const page = (who) => login(browser, base, env(`${who}_EXT`), pw(env(`${who}_EXT`)), failures);
  const [a, b, c] = [await page("A"), await page("B"), await page("C")];
  const group = env("GROUP");

  // A writes it (keyboard and labels only).
  await a.getByText("Write a call-back").click();
  await a.getByLabel("Number to call back").fill("5559100");
  await a.getByLabel("Whom to call back (name)").fill("Aiko Mori");
  await a.getByLabel("Message").fill("wants a quote for ten phones");
  await a.getByLabel("For", { exact: true }).selectOption(`group:${group}`);
  await a.getByRole("button", { name: "Save call-back" }).click();
  await a.locator("#cb-status", { hasText: "Call-back saved." }).waitFor();

  // B and C: G lights up, with its text.
  for (const p of [b, c]) {
    await p.locator("#lamp-g-text", { hasText: "Group: 1 waiting" }).waitFor({ timeout: 5000 });
    if (!(await p.locator("#lamp-g").getAttribute("class")).includes("waiting")) failures.push("G lamp not lit");
    await p.locator("#lamp-p-text", { hasText: "Personal: none" }).waitFor();
  }
  await c.screenshot({ path: `${artifacts}/callback-waiting.png` });

  // B claims it; C sees who handles it.
  await b.getByRole("button", { name: "Claim: call-back for Aiko Mori (5559100)" }).click();
  await b.locator("#lamp-g-text", { hasText: "you are handling 1" }).waitFor({ timeout: 5000 });
  await c.locator("#cb-list", { hasText: `In progress by ${env("B_EXT")}` }).waitFor({ timeout: 5000 });
  if (await c.getByRole("button", { name: /^Claim/ }).count() !== 0) failures.push("C can still claim it");
  await c.screenshot({ path: `${artifacts}/callback-claimed.png` });

  // B closes it as succeeded: gone from both lists, in the customer's history.
  await b.getByLabel("Note for the call-back to Aiko Mori (5559100)").fill("quote sent");
  await b.getByRole("button", { name: "Succeeded: call-back for Aiko Mori (5559100)" }).click();
  for (const p of [b, c]) {
    await p.locator("#lamp-g-text", { hasText: "Group: none" }).waitFor({ timeout: 5000 });
    if (await p.locator("#cb-list li").count() !== 0) failures.push("the closed call-back stayed listed");
  }
  await c.getByLabel("Name or number").fill("mori");
  await c.getByRole("button", { name: "Search" }).click();
  await c.getByRole("button", { name: /Aiko Mori \(5559100\)/ }).click();
  await c.locator("#customer", { hasText: "call-back succeeded" }).waitFor({ timeout: 5000 });
  await c.locator("#customer", { hasText: "quote sent" }).waitFor();
  await c.screenshot({ path: `${artifacts}/callback-history.png` });
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("call-back box browser test", failures);
