// The supervisor's campaigns: create one, load customer lists (with an upload
// progress bar, and every row left out listed by line and field), start,
// pause, resume, stop, and watch each campaign's progress live. Needs a
// supervisor's desk login (the desktop's cookie).
"use strict";

const $ = (id) => document.getElementById(id);
const campaigns = new Map();
let seq = 0, selected = null;

function percent(x) { return `${Math.round(x * 100)} %`; }

function outcomes(p) {
  const parts = Object.entries(p.outcomes).map(([k, n]) => `${k.replace(/_/g, " ")} ${n}`);
  return parts.length ? parts.join(", ") : "—";
}

function render() {
  const body = document.querySelector("#campaigns tbody");
  body.textContent = "";
  $("campaigns-none").hidden = campaigns.size > 0;
  for (const p of [...campaigns.values()].sort((a, b) => a.id - b.id)) {
    const row = document.createElement("tr");
    row.dataset.id = p.id;
    const cells = [p.name, p.group, p.state, p.contacts, p.remaining, p.in_attempt, outcomes(p),
      p.attempts_last_hour, percent(p.connect_rate), `${p.abandoned} (${percent(p.abandon_rate)})`];
    cells.forEach((v, i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      td.textContent = String(v);
      row.append(td);
    });
    const td = document.createElement("td");
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Open";
    open.setAttribute("aria-label", `Open ${p.name}`);
    open.onclick = () => select(p.id);
    td.append(open);
    row.append(td);
    body.append(row);
  }
}

function waitingText(w) {
  if (!w) return "Dialling.";
  const at = (ms) => new Date(ms).toLocaleString();
  switch (w.reason) {
    case "not_running": return "Not running.";
    case "no_agents": return "Waits: no agent of the group is available.";
    case "trunk_down": return "Waits: its trunk is down (the registration failed).";
    case "inbound_waiting": return "Waits: inbound callers of the group come first.";
    case "below_threshold": return `Waits: only ${percent(w.ratio)} of the group's agents are idle.`;
    case "at_limit": return "At its limit of attempts at once.";
    case "outside_hours": return `Outside the customers' calling hours until ${at(w.until_ms)}.`;
    case "retry_later": return `Next retry at ${at(w.at_ms)}.`;
    case "finished": return "Every customer has been called.";
    default: return w.reason;
  }
}

async function select(id) {
  selected = id;
  const o = await api("GET", `/api/v1/campaigns/${id}`);
  campaigns.set(id, o.progress);
  render();
  $("detail").hidden = false;
  $("detail-title").textContent = o.campaign.settings.name;
  $("detail-audit").href = `/api/v1/campaigns/${id}/audit`;
  $("detail-state").textContent =
    `${o.campaign.state}; group ${o.campaign.settings.group}, trunk ${o.campaign.settings.trunk}. ${waitingText(o.waiting)}`;
  const state = o.campaign.state;
  const allowed = { start: state === "ready", pause: state === "running", resume: state === "paused",
    stop: state !== "stopped" };
  for (const b of document.querySelectorAll("#detail [data-action]")) b.disabled = !allowed[b.dataset.action];
  await showContacts(id, o.progress.contacts);
}

// The first contacts of the list with where each stands (a page of them).
const PAGE = 100;
async function showContacts(id, total) {
  const list = await api("GET", `/api/v1/campaigns/${id}/contacts?limit=${PAGE}`);
  const body = document.querySelector("#contacts tbody");
  body.textContent = "";
  const words = (s) => s.replace(/_/g, " ");
  for (const c of list) {
    const row = document.createElement("tr");
    const state = c.status.state === "done" ? `done: ${words(c.status.outcome)}` : words(c.status.state);
    const last = c.last ? `${words(c.last[0])} at ${new Date(c.last[1]).toLocaleString()}` : "—";
    [c.line, c.number, state, c.tries, last].forEach((v, i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      td.textContent = String(v);
      row.append(td);
    });
    body.append(row);
  }
  $("contacts-more").textContent = total > list.length ? `The first ${list.length} of ${total}.` : "";
}

for (const b of document.querySelectorAll("#detail [data-action]")) {
  b.onclick = async () => {
    try {
      await api("POST", `/api/v1/campaigns/${selected}/${b.dataset.action}`);
      await select(selected);
    } catch (e) {
      $("detail-state").textContent = e.message;
    }
  };
}

// The list goes up with XMLHttpRequest: fetch() has no upload progress.
$("upload-form").onsubmit = (ev) => {
  ev.preventDefault();
  const file = $("upload-file").files[0];
  if (!file || selected === null) return;
  const bar = $("upload-progress"), status = $("upload-status"), errors = $("upload-errors");
  errors.textContent = "";
  bar.hidden = false; bar.value = 0;
  status.textContent = "Uploading…";
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/v1/campaigns/${selected}/contacts`);
  xhr.withCredentials = true;
  xhr.setRequestHeader("Content-Type", "text/csv");
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    bar.value = Math.round((e.loaded / e.total) * 100);
    status.textContent = `Uploading… ${bar.value} %`;
  };
  xhr.upload.onload = () => { bar.value = 100; status.textContent = "Reading the list…"; };
  xhr.onerror = () => { status.textContent = "The upload failed (no connection)."; };
  xhr.onload = () => {
    let r = null;
    try { r = JSON.parse(xhr.responseText); } catch { r = null; }
    if (xhr.status !== 200 || !r) {
      status.textContent = (r && r.message) || `The list was refused (${xhr.status}).`;
      return;
    }
    const left = r.errors.length === 1 ? "1 row" : `${r.errors.length} rows`;
    status.textContent = `${r.imported} imported, ${r.duplicates} already in the campaign, ` +
      `${r.do_not_call} on the do-not-call list, ${left} left out.`;
    for (const e of r.errors) {
      const li = document.createElement("li");
      li.textContent = `Line ${e.line}${e.field ? `, ${e.field}` : ""}: ${e.problem}`;
      errors.append(li);
    }
    select(selected);
  };
  xhr.send(file);
};

// The form starts from the configuration's defaults.
async function loadDefaults() {
  const d = await api("GET", "/api/v1/campaigns/defaults");
  $("new-from").value = d.hours_from;
  $("new-to").value = d.hours_to;
  $("new-zone").value = d.time_zone;
  $("new-ratio").value = d.idle_ratio;
  $("new-max").value = d.max_attempts;
}

$("new-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const settings = {
    name: $("new-name").value, group: $("new-group").value, trunk: $("new-trunk").value,
    caller_id: $("new-caller-id").value, hours_from: $("new-from").value, hours_to: $("new-to").value,
    time_zone: $("new-zone").value, idle_ratio: Number($("new-ratio").value),
    max_attempts: Number($("new-max").value),
  };
  try {
    const c = await api("POST", "/api/v1/campaigns", settings);
    $("new-status").textContent = `Created ${c.settings.name}.`;
    await select(c.id);
  } catch (e) {
    $("new-status").textContent = e.message;
  }
};

$("dnc-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const numbers = $("dnc-numbers").value.split("\n").map((n) => n.trim()).filter(Boolean);
  try {
    const r = await api("POST", "/api/v1/do-not-call", { numbers });
    $("dnc-status").textContent = `${r.added} numbers added.`;
    $("dnc-numbers").value = "";
  } catch (e) {
    $("dnc-status").textContent = e.message;
  }
};

function options(select, names) {
  select.textContent = "";
  for (const n of names) {
    const o = document.createElement("option");
    o.value = n; o.textContent = n;
    select.append(o);
  }
}

async function load() {
  let list;
  try {
    list = await api("GET", "/api/v1/campaigns");
  } catch (e) {
    if (e.status === 401) { location.href = "/"; return false; }
    $("refused").hidden = false;
    return false;
  }
  const board = await api("GET", "/api/v1/board");
  seq = board.seq;
  options($("new-group"), board.groups.map((g) => g.name));
  options($("new-trunk"), (await api("GET", "/api/v1/trunks")).map((t) => t.name));
  await loadDefaults();
  campaigns.clear();
  for (const p of list) campaigns.set(p.id, p);
  render();
  $("work").hidden = false;
  return true;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/v1/events?since=${seq}`);
  ws.onopen = () => { $("status").textContent = "Live."; };
  ws.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.type === "resync") { load(); return; }
    seq = e.seq;
    if (e.type !== "campaign") return;
    campaigns.set(e.progress.id, e.progress);
    render();
  };
  ws.onclose = () => {
    $("status").textContent = "Reconnecting…";
    setTimeout(connect, 2000);
  };
}

load().then((ok) => { if (ok) connect(); });
