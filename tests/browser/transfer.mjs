// Transfer from the desktop in headless Chromium: agents A and B are logged in
// (prints READY); a customer who called before rings A from the queue; A's
// pop shows them; A transfers the call to B from the pop; B's phone rings and
// B's page pops up the same customer with their history.
//   usage: node transfer.mjs BASE_URL
//   env: A_EXT A_PW B_EXT B_PW CALLER EARLIER_NOTES ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const browser = await launch();
const failures = [];
try {
  const a = await login(browser, base, env("A_EXT"), env("A_PW"), failures);
  const b = await login(browser, base, env("B_EXT"), env("B_PW"), failures);
  console.log("READY");
  const popA = a.getByRole("region", { name: "Caller" });
  await popA.getByText(env("CALLER")).first().waitFor({ timeout: 20000 });
  await a.locator("#pop-state", { hasText: "On the call." }).waitFor({ timeout: 10000 });
  await a.getByLabel("Transfer to").fill(env("B_EXT"));
  await a.getByRole("button", { name: "Transfer" }).click();
  await a.locator("#transfer-status", { hasText: "your phone is released when they answer" }).waitFor();
  await a.screenshot({ path: `${env("ARTIFACTS")}/transfer-sent.png` });
  // B gets the customer with their screen pop and history.
  const popB = b.getByRole("region", { name: "Caller" });
  await popB.getByText(env("CALLER")).first().waitFor({ timeout: 15000 });
  await popB.getByText(env("EARLIER_NOTES")).waitFor();
  await b.locator("#pop-state", { hasText: "On the call." }).waitFor({ timeout: 10000 });
  await b.screenshot({ path: `${env("ARTIFACTS")}/transfer-received.png` });
  // A's call is over.
  await a.locator("#pop-state", { hasText: "Call ended." }).waitFor({ timeout: 10000 });
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("desktop transfer browser test", failures);
