// The wallboard in headless Chromium: a supervisor watches queue 500; a caller
// waits (prints WAITING once the board shows it), then an agent answers.
//   usage: node wallboard.mjs BASE_URL   env: S_EXT S_PW ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const browser = await launch();
const failures = [];
try {
  const page = await login(browser, base, env("S_EXT"), env("S_PW"), failures);
  await page.goto(base + "/wallboard");
  await page.getByText("Live.").waitFor();
  const row = page.locator('#queues tr[data-queue="500"]');
  const cell = (name) => row.locator("td").nth(["Waiting", "Longest wait", "Answered", "Abandoned"].indexOf(name));
  await row.waitFor();
  console.log("READY");
  await cell("Waiting").filter({ hasText: /^1$/ }).waitFor({ timeout: 20000 });
  await page.screenshot({ path: `${env("ARTIFACTS")}/wallboard-waiting.png` });
  console.log("WAITING");
  await cell("Answered").filter({ hasText: /^1$/ }).waitFor({ timeout: 20000 });
  await cell("Waiting").filter({ hasText: /^0$/ }).waitFor();
  await page.screenshot({ path: `${env("ARTIFACTS")}/wallboard-answered.png` });
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("wallboard browser test", failures);
