// The wallboard: agents per state in each group, live. Needs a desk login
// (the desktop's cookie); without one it sends the viewer to the desktop.
"use strict";

const STATES = ["available", "ringing", "on_call", "wrap_up", "away", "busy", "offline"];
const LABELS = { available: "Available", ringing: "Ringing", on_call: "On a call", wrap_up: "Wrap-up",
                 away: "Away", busy: "Busy", offline: "Offline" };
let board = null, seq = 0, queues = [];
// The open call-backs this session sees (a supervisor: all), by id.
const callbacks = new Map();
// Campaign progress by id (supervisors only; others never see the section).
const campaigns = new Map();

function renderCampaigns() {
  const body = document.querySelector("#wall-campaigns tbody");
  body.textContent = "";
  for (const p of [...campaigns.values()].sort((a, b) => a.id - b.id)) {
    const row = document.createElement("tr");
    row.dataset.id = p.id;
    const cells = [p.name, p.state, p.remaining, p.in_attempt, p.outcomes.connected || 0,
      p.attempts_last_hour, `${Math.round(p.connect_rate * 100)} %`, p.abandoned];
    cells.forEach((v, i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      td.textContent = String(v);
      row.append(td);
    });
    body.append(row);
  }
}

function renderFlagged() {
  const body = document.querySelector("#flagged tbody");
  body.textContent = "";
  const flagged = [...callbacks.values()].filter((c) => c.flagged_ms).sort((a, b) => a.id - b.id);
  document.getElementById("flagged-none").hidden = flagged.length > 0;
  for (const c of flagged) {
    const row = document.createElement("tr");
    row.dataset.id = c.id;
    const cells = [
      c.target.group ? `group ${c.target.group}` : c.target.agent,
      c.name ? `${c.name} (${c.customer})` : c.customer,
      new Date(c.created_ms).toLocaleString(),
      c.status.state === "in_progress" ? `in progress by ${c.status.by}` : "open",
    ];
    cells.forEach((text, i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      td.textContent = text;
      row.append(td);
    });
    body.append(row);
  }
}

function applyCallback(c) {
  if (c.status.state === "done") callbacks.delete(c.id);
  else callbacks.set(c.id, c);
  renderFlagged();
}

const COLUMNS = [
  ["Queue", (q) => q.number],
  ["Waiting", (q) => String(q.waiting)],
  ["Longest wait", (q) => duration(q.longest_wait_ms)],
  ["Answered", (q) => String(q.answered_today)],
  ["Abandoned", (q) => String(q.abandoned_today)],
  ["Service level", (q) => `${q.service_level_pct} % in ${q.service_level_secs} s`],
  ["Average wait", (q) => duration(q.average_wait_ms)],
  ["Average talk", (q) => duration(q.average_talk_ms)],
];

function duration(ms) {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function renderQueues() {
  const head = document.querySelector("#queues thead");
  const body = document.querySelector("#queues tbody");
  head.textContent = ""; body.textContent = "";
  const tr = document.createElement("tr");
  for (const [h] of COLUMNS) {
    const th = document.createElement("th"); th.scope = "col"; th.textContent = h; tr.append(th);
  }
  head.append(tr);
  for (const q of queues) {
    const row = document.createElement("tr");
    row.dataset.queue = q.number;
    COLUMNS.forEach(([, cell], i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      td.textContent = cell(q);
      row.append(td);
    });
    body.append(row);
  }
}

async function load() {
  const r = await fetch("/api/v1/board", { credentials: "same-origin" });
  if (r.status === 401) { location.href = "/"; return; }
  board = await r.json();
  seq = board.seq;
  render();
  queues = await (await fetch("/api/v1/queues", { credentials: "same-origin" })).json();
  renderQueues();
  callbacks.clear();
  for (const c of await (await fetch("/api/v1/callbacks", { credentials: "same-origin" })).json()) callbacks.set(c.id, c);
  renderFlagged();
  const r2 = await fetch("/api/v1/campaigns", { credentials: "same-origin" });
  document.getElementById("campaigns").hidden = !r2.ok;
  campaigns.clear();
  if (r2.ok) for (const p of await r2.json()) campaigns.set(p.id, p);
  renderCampaigns();
}

function render() {
  const head = document.querySelector("#agents thead");
  const body = document.querySelector("#agents tbody");
  head.textContent = ""; body.textContent = "";
  const tr = document.createElement("tr");
  for (const h of ["Group", ...STATES.map((s) => LABELS[s])]) {
    const th = document.createElement("th"); th.scope = "col"; th.textContent = h; tr.append(th);
  }
  head.append(tr);
  for (const g of board.groups) {
    const row = document.createElement("tr");
    const th = document.createElement("th"); th.scope = "row"; th.textContent = g.name; row.append(th);
    for (const s of STATES) {
      const td = document.createElement("td");
      td.textContent = String(g.agents.filter((a) => a.state === s).length);
      row.append(td);
    }
    body.append(row);
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/v1/events?since=${seq}`);
  ws.onopen = () => { document.getElementById("status").textContent = "Live."; };
  ws.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.type === "resync") { load(); return; }
    seq = e.seq;
    if (e.type === "queues") { queues = e.queues; renderQueues(); return; }
    if (e.type === "callback") { applyCallback(e.callback); return; }
    if (e.type === "campaign") { campaigns.set(e.progress.id, e.progress); renderCampaigns(); return; }
    if (e.type !== "presence" || !board) return;
    for (const g of board.groups) for (const a of g.agents) if (a.extension === e.extension) a.state = e.state;
    render();
  };
  ws.onclose = () => {
    document.getElementById("status").textContent = "Reconnecting…";
    setTimeout(connect, 2000);
  };
}

load().then(connect);
