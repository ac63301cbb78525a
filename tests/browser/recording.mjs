// Call recording on the desktop in headless Chromium: the agent is logged in
// (prints READY); a customer calls and the pop shows them; "Record call" starts
// recording ("● Recording", the button turns to "Stop recording"); "Stop
// recording" saves it ("Recording saved"), and the pop's history lists the
// call recording with a player whose WAV loads from the page's own origin
// and plays for more than a second.
//   usage: node recording.mjs BASE_URL
//   env: EXT PW CALLER ARTIFACTS
import { env, fetched, finish, launch, login } from "./lib.mjs";

const base = process.argv[2];
const browser = await launch();
const failures = [];
try {
  const p = await login(browser, base, env("EXT"), env("PW"), failures);
  console.log("READY");
  const pop = p.getByRole("region", { name: "Caller" });
  await pop.getByText(env("CALLER")).first().waitFor({ timeout: 20000 });
  await p.locator("#pop-state", { hasText: "On the call." }).waitFor({ timeout: 10000 });
  await pop.getByRole("button", { name: "Record call" }).click();
  await p.locator("#recording-status", { hasText: "● Recording" }).waitFor();
  await p.screenshot({ path: `${env("ARTIFACTS")}/recording-on.png` });
  await p.waitForTimeout(2000);
  await pop.getByRole("button", { name: "Stop recording" }).click();
  await p.locator("#recording-status", { hasText: "Recording saved" }).waitFor({ timeout: 10000 });
  const player = pop.locator("label.recording audio");
  await player.first().waitFor({ timeout: 10000 });
  const src = await player.first().getAttribute("src");
  const type = await fetched(p, src);
  if (type !== "200 audio/wav RIFF") failures.push(`the recording: ${type}`);
  const secs = await player.first().evaluate(
    (a) =>
      new Promise((done) => {
        a.addEventListener("loadedmetadata", () => done(a.duration), { once: true });
        a.addEventListener("error", () => done(-1), { once: true });
        a.preload = "metadata";
        a.load();
      }),
  );
  if (!(secs > 1)) failures.push(`the player's recording lasts ${secs} s`);
  await p.screenshot({ path: `${env("ARTIFACTS")}/recording-saved.png` });
  await pop.getByRole("button", { name: "Record call" }).waitFor();
} catch (e) {
  failures.push(String((e && e.stack) || e));
} finally {
  await browser.close();
}
finish("desktop call recording browser test", failures);
