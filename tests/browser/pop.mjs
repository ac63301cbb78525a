// The screen pop in headless Chromium: agent A's page is ready (prints READY);
// a customer who called before rings; the pop shows the earlier record; A writes
// today's record with a disposition and the customer's name and saves it, then
// finds the customer by name in the history search.
//   usage: node pop.mjs BASE_URL   env: A_EXT A_PW CALLER EARLIER_NOTES ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const browser = await launch();
const failures = [];
try {
  const a = await login(browser, base, env("A_EXT"), env("A_PW"), failures);
  console.log("READY");
  const pop = a.getByRole("region", { name: "Caller" });
  await pop.waitFor({ timeout: 20000 });
  await pop.getByText(env("CALLER")).first().waitFor();
  await pop.getByText(env("EARLIER_NOTES")).waitFor();
  await a.screenshot({ path: `${env("ARTIFACTS")}/screen-pop.png` });
  await a.getByRole("heading", { name: "Today's record" }).waitFor({ timeout: 10000 });
  await a.getByLabel("Customer's name").fill("Keiko Sato");
  await a.getByLabel("Notes").fill("called back about the refund");
  await a.getByLabel("Outcome").selectOption("resolved");
  await a.getByRole("button", { name: "Save record" }).click();
  await a.locator("#record-status", { hasText: "Saved." }).waitFor();
  await a.screenshot({ path: `${env("ARTIFACTS")}/record-saved.png` });
  // The customer history search finds them by part of the name, with both records.
  await a.getByLabel("Name or number").fill("sato");
  await a.getByRole("button", { name: "Search" }).click();
  await a.locator("#search-status", { hasText: "1 customer found." }).waitFor();
  await a.getByRole("button", { name: /Keiko Sato \(\d+\) — 2 records/ }).click();
  const customer = a.locator("#customer");
  await customer.getByText(env("EARLIER_NOTES")).waitFor();
  await customer.getByText("called back about the refund").waitFor();
  await a.getByLabel("Name or number").fill("nobody here");
  await a.getByRole("button", { name: "Search" }).click();
  await a.locator("#search-status", { hasText: "No customer matches" }).waitFor();
  await a.screenshot({ path: `${env("ARTIFACTS")}/customer-search.png` });
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("screen pop browser test", failures);
