// An agent's desktop in headless Chromium during a campaign attempt: when
// the agent's phone (SIPp) answers, the page shows exactly one customer
// (name, number, the list's fields) with a countdown; the agent clicks
// "Call this customer", sees "Connected.", and once the customer hangs up
// the record is gone from the page and from the page's memory.
//   usage: node attempt.mjs BASE_URL   env: A_EXT A_PW S_EXT S_PW ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const browser = await launch();
const failures = [];

/// The supervisor's API, over Node's fetch.
async function supervisor() {
  const r = await fetch(`${base}/api/v1/session`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ extension: env("S_EXT"), password: env("S_PW") }),
  });
  const { token } = await r.json();
  return async (method, path, body, type = "application/json") => {
    const res = await fetch(base + path, { method, body, headers: { authorization: `Bearer ${token}`, "content-type": type } });
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
    return res.status === 204 ? null : res.json();
  };
}

try {
  const page = await login(browser, base, env("A_EXT"), env("A_PW"), failures);
  await page.getByText("No campaign customer for you now.").waitFor();
  const boss = await supervisor();
  const settings = { name: "spring", group: "outbound", trunk: "carrier", hours_from: "00:00", hours_to: "24:00",
                     time_zone: "Asia/Tokyo", idle_ratio: 0.5, confirm_secs: 30, ring_secs: 15 };
  const created = await boss("POST", "/api/v1/campaigns", JSON.stringify(settings));
  await boss("POST", `/api/v1/campaigns/${created.id}/contacts`, "number,name,plan\n+81300000001,Aiko Tanaka,gold\n", "text/csv");
  await boss("POST", `/api/v1/campaigns/${created.id}/start`);

  const card = page.locator("#attempt-card");
  await card.getByRole("heading", { name: "Aiko Tanaka" }).waitFor({ timeout: 20000 });
  const shown = await card.innerText();
  for (const want of ["Campaign spring", "+81300000001", "plan", "gold"]) {
    if (!shown.includes(want)) failures.push(`the card lacks ${want}: ${shown}`);
  }
  if (!/Confirm or skip within \d+ s\./.test(shown)) failures.push(`no countdown: ${shown}`);
  if (await page.locator("#pop").isVisible()) failures.push("the campaign's call pops up as a caller");
  await page.screenshot({ path: `${env("ARTIFACTS")}/attempt-shown.png` });

  await page.getByRole("button", { name: "Call this customer" }).click();
  await card.getByText("Connected.").waitFor({ timeout: 20000 });
  await page.getByText(/^The campaign call ended: the customer was connected\./).waitFor({ timeout: 20000 });
  const html = await page.content();
  for (const gone of ["Aiko", "+81300000001", "gold"]) {
    if (html.includes(gone)) failures.push(`${gone} is still in the page after the erase`);
  }
  const held = await page.evaluate(() => desk.attempt);
  if (held !== null) failures.push(`the page still holds ${JSON.stringify(held)}`);
  await page.screenshot({ path: `${env("ARTIFACTS")}/attempt-erased.png` });
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("attempt", failures);
