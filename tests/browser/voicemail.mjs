// Voicemail on the desktop in headless Chromium: the mailbox's owner sees the
// message a caller left (who, when, how long, "New"), its recording loads as
// a WAV from the page's own origin, "Mark heard" turns the new count to
// zero, "Delete" (confirmed) removes it, and a reload shows the same.
//   usage: node voicemail.mjs BASE_URL
//   env: EXT PW CALLER ARTIFACTS
import { env, fetched, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const browser = await launch();
const failures = [];
try {
  const p = await login(browser, base, env("EXT"), env("PW"), failures);
  const box = p.getByRole("region", { name: "Voicemail" });
  await box.getByText("Voicemail: 1 new, 0 heard.").waitFor({ timeout: 10000 });
  const item = box.getByRole("listitem").filter({ hasText: env("CALLER") });
  await item.getByText("New:").waitFor();
  const src = await item.locator("audio").getAttribute("src");
  const type = await fetched(p, src);
  if (type !== "200 audio/wav RIFF") failures.push(`the recording: ${type}`);
  await p.screenshot({ path: `${env("ARTIFACTS")}/voicemail-new.png` });
  await item.getByRole("button", { name: "Mark heard" }).click();
  await box.getByText("Voicemail: no new messages, 1 heard.").waitFor();
  await p.reload();
  await p.getByRole("heading", { name: "Presence board" }).waitFor();
  await box.getByText("Voicemail: no new messages, 1 heard.").waitFor();
  p.once("dialog", (d) => d.accept());
  await box.getByRole("button", { name: "Delete" }).click();
  await box.getByText("Deleted.").waitFor();
  await box.getByText("Voicemail: no new messages, 0 heard.").waitFor();
  if ((await box.getByRole("listitem").count()) !== 0) failures.push("the message is still listed");
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("desktop voicemail browser test", failures);
