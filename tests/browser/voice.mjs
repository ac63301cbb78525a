// A queue caller's call-back in headless Chromium: the member's desktop lists
// it with a voice message the browser plays (as long as the PBX says); once it
// waits too long, the member's desktop says so and the supervisor's wallboard
// lists it; claimed and closed, its voice message plays from the customer's
// history.
//   usage: node voice.mjs BASE_URL   env: MEMBER_EXT BOSS_EXT CUSTOMER VOICE_MS ARTIFACTS
import { env, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const artifacts = env("ARTIFACTS");
const browser = await launch();
const failures = [];
const pw = (ext) => (ext.startsWith("user") ? ext.replace("user", "pw") : `pw${ext}`);
const seconds = Number(env("VOICE_MS")) / 1000;

/// The length the browser decoded for an <audio> element (-1: it could not).
function duration(audio) {
  return audio.evaluate((a) => new Promise((resolve) => {
    if (a.readyState >= 1) return resolve(a.duration);
    a.onloadedmetadata = () => resolve(a.duration);
    a.onerror = () => resolve(-1);
    a.preload = "metadata";
    a.load();
  }));
}

async function plays(audio, where) {
  const d = await duration(audio);
  if (!(Math.abs(d - seconds) < 0.1)) failures.push(`${where}: the voice message plays ${d} s, not ${seconds} s`);
}

try {
  const member = await login(browser, base, env("MEMBER_EXT"), pw(env("MEMBER_EXT")), failures);
  const item = member.locator("#cb-list li").first();
  await item.waitFor({ timeout: 5000 });
  await item.getByText("Voice message 1").waitFor();
  await plays(item.locator("audio"), "the list");
  await member.locator("#lamp-g-text", { hasText: "Group: 1 waiting" }).waitFor();

  const boss = await login(browser, base, env("BOSS_EXT"), pw(env("BOSS_EXT")), failures);
  await boss.goto(base + "/wallboard");
  await boss.locator("#flagged tbody tr", { hasText: "group support" }).waitFor({ timeout: 10000 });
  await member.locator("#cb-alert", { hasText: "Waiting too long" }).waitFor({ timeout: 5000 });
  await boss.screenshot({ path: `${artifacts}/wallboard-flagged.png` });
  await member.screenshot({ path: `${artifacts}/callback-voice.png` });

  await member.getByRole("button", { name: /^Claim: call-back for/ }).click();
  await member.getByRole("button", { name: /^Succeeded: call-back for/ }).click();
  await member.locator("#lamp-g-text", { hasText: "Group: none" }).waitFor({ timeout: 5000 });
  await boss.locator("#flagged-none").waitFor({ timeout: 5000 });

  const customer = env("CUSTOMER");
  await member.getByLabel("Name or number").fill(customer);
  await member.getByRole("button", { name: "Search" }).click();
  await member.getByRole("button", { name: new RegExp(customer.replace("+", "\\+")) }).click();
  await member.locator("#customer", { hasText: "call-back succeeded" }).waitFor({ timeout: 5000 });
  const old = member.locator("#customer-history audio").first();
  await old.waitFor({ timeout: 5000 });
  await plays(old, "the history");
  await member.screenshot({ path: `${artifacts}/callback-voice-history.png` });
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("voice message browser test", failures);
