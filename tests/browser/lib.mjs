// Shared by the desktop tests: Debian's Chromium, and an agent's logged-in page.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} missing`);
  return v;
};

export async function launch() {
  mkdirSync(env("ARTIFACTS"), { recursive: true });
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu"] });
}

/// A page logged in as `ext`; page errors and any request leaving `base` are failures.
export async function login(browser, base, ext, password, failures) {
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const p = await ctx.newPage();
  p.on("pageerror", (e) => failures.push(`${ext}: page error ${e.message}`));
  p.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(base) && !u.startsWith(base.replace("http:", "ws:"))) failures.push(`${ext}: outside request ${u}`);
  });
  await p.goto(base + "/");
  await p.getByLabel("Extension", { exact: true }).fill(ext);
  await p.getByLabel("Password", { exact: true }).fill(password);
  await p.getByRole("button", { name: "Log in" }).click();
  await p.getByRole("heading", { name: "Presence board" }).waitFor();
  await p.getByText("Live.").waitFor();
  return p;
}

/// What fetching `src` from page `p` gives: "status content-type magic"
/// ("200 audio/wav RIFF" for a WAV).
export async function fetched(p, src) {
  return p.evaluate(async (s) => {
    const r = await fetch(s);
    const b = new Uint8Array(await r.arrayBuffer());
    return `${r.status} ${r.headers.get("content-type")} ${String.fromCharCode(...b.slice(0, 4))}`;
  }, src);
}

/// Ends the test: non-zero with every failure listed.
export function finish(name, failures) {
  if (failures.length) {
    console.error(failures.join("\n"));
    process.exit(1);
  }
  console.log(`${name}: ok`);
}
