// The supervisor's campaigns page in headless Chromium: create a campaign,
// load a list of 3,000 customers with one bad row (the upload's progress bar
// reaches 100 %, the bad row is named by line and field), start it and see
// why it waits; the wallboard, open beside it, follows live. An agent is
// refused the page.
//   usage: node campaigns.mjs BASE_URL   env: S_EXT S_PW A_EXT A_PW ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";
import { writeFileSync } from "node:fs";

const base = process.argv[2];
const browser = await launch();
const failures = [];
try {
  const page = await login(browser, base, env("S_EXT"), env("S_PW"), failures);
  await page.getByRole("link", { name: "Campaigns" }).waitFor();
  const wall = await page.context().newPage();
  await wall.goto(base + "/wallboard");
  await wall.getByText("Live.").waitFor();
  await page.goto(base + "/campaigns");
  await page.getByText("Live.").waitFor();

  await page.getByLabel("Name", { exact: true }).fill("Winter offers");
  await page.getByLabel("Group", { exact: true }).selectOption("sales");
  await page.getByLabel("Trunk", { exact: true }).selectOption("carrier");
  await page.getByLabel("Time zone of customers without one").fill("Asia/Tokyo");
  await page.getByRole("button", { name: "Create" }).click();
  await page.getByText("Created Winter offers.").waitFor();
  await page.getByRole("heading", { name: "Winter offers" }).waitFor();

  const rows = ["number,name,time_zone"];
  for (let i = 0; i < 3000; i++) rows.push(`03${String(30000000 + i)},Customer ${i},`);
  rows.push("not-a-number,Nobody,");
  const file = `${env("ARTIFACTS")}/customers.csv`;
  writeFileSync(file, rows.join("\n") + "\n");
  await page.getByLabel(/^Customer list/).setInputFiles(file);
  await page.getByRole("button", { name: "Load the list" }).click();
  await page.getByText(/^3000 imported, 0 already in the campaign, 0 on the do-not-call list, 1 row left out\.$/).waitFor();
  const bar = await page.locator("#upload-progress").evaluate((p) => p.value);
  if (bar !== 100) failures.push(`the progress bar ended at ${bar}`);
  await page.getByText("Line 3002, number:").waitFor();
  await page.getByText("The first 100 of 3000.").waitFor();
  const first = await page.locator("#contacts tbody tr").first().textContent();
  if (!first.includes("+81330000000") || !first.includes("waiting")) failures.push(`the first contact reads ${first}`);

  await page.getByRole("button", { name: "Start" }).click();
  await page.locator("#detail-state").filter({ hasText: /^running;.*no agent of the group is available/ }).waitFor();
  const row = wall.locator("#wall-campaigns tbody tr").filter({ hasText: "Winter offers" });
  await row.filter({ hasText: "running" }).waitFor({ timeout: 10000 });
  const remaining = await row.locator("td").nth(1).textContent();
  if (remaining !== "3000") failures.push(`the wallboard shows ${remaining} remaining`);
  await page.screenshot({ path: `${env("ARTIFACTS")}/campaigns.png` });
  await wall.screenshot({ path: `${env("ARTIFACTS")}/wallboard-campaigns.png` });

  const agent = await login(browser, base, env("A_EXT"), env("A_PW"), failures);
  if (await agent.getByRole("link", { name: "Campaigns" }).isVisible()) failures.push("an agent sees the campaigns link");
  await agent.goto(base + "/campaigns");
  await agent.getByText("Campaigns are for supervisors.").waitFor();
  if (await agent.locator("#work").isVisible()) failures.push("an agent sees the campaign pages");
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("campaigns browser test", failures);
