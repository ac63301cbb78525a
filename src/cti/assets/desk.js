// The agent desktop: log in, the live presence board, my state, click-to-call.
// Talks only to this PBX's /api/v1 (same origin; the session is an HttpOnly cookie).
"use strict";

const $ = (id) => document.getElementById(id);
const LABELS = {
  available: "Available", away: "Away", busy: "Busy", ringing: "Ringing",
  on_call: "On a call", wrap_up: "Wrap-up", offline: "Offline",
};
const desk = { me: null, agents: new Map(), groups: [], callbacks: new Map(), seq: 0, socket: null, retry: 1000, renewTimer: null, pop: null, attempt: null };

function show(view) {
  $("login-view").hidden = view !== "login";
  $("desk-view").hidden = view !== "desk";
}

function since(ms) {
  const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(2, "0"), ss = String(r).padStart(2, "0");
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function agentRow(a) {
  const li = document.createElement("li");
  li.className = "agent";
  li.dataset.extension = a.extension;
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.setAttribute("aria-hidden", "true");
  const who = document.createElement("span");
  who.className = "who";
  const state = document.createElement("span");
  state.className = "state";
  const time = document.createElement("span");
  time.className = "since";
  li.append(swatch, who, state, time);
  paint(li, a);
  return li;
}

function paint(li, a) {
  li.className = `agent s-${a.state}`;
  li.querySelector(".who").textContent = a.name ? `${a.name} (${a.extension})` : a.extension;
  const state = li.querySelector(".state");
  state.textContent = "";
  const label = document.createElement("span");
  label.className = "state-label";
  label.textContent = LABELS[a.state] || a.state;
  state.append(label);
  if (a.reason) {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = a.reason;
    state.append(reason);
  }
  li.querySelector(".since").textContent = since(a.since_ms);
  li.querySelector(".since").dataset.since = a.since_ms;
}

function renderBoard(board) {
  const root = $("groups");
  root.textContent = "";
  desk.agents.clear();
  const groups = board.groups.slice();
  if (board.ungrouped.length) groups.push({ name: "Other extensions", agents: board.ungrouped });
  for (const g of groups) {
    const div = document.createElement("div");
    div.className = "group";
    const h = document.createElement("h3");
    h.textContent = g.name;
    const ul = document.createElement("ul");
    ul.setAttribute("aria-label", `${g.name}: agents`);
    for (const a of g.agents) {
      const li = agentRow(a);
      ul.append(li);
      const rows = desk.agents.get(a.extension) || { data: a, rows: [] };
      rows.data = a;
      rows.rows.push(li);
      desk.agents.set(a.extension, rows);
    }
    div.append(h, ul);
    root.append(div);
  }
  paintMe();
}

function paintMe() {
  if (!desk.me) return;
  const mine = desk.agents.get(desk.me.extension);
  const state = mine ? mine.data.state : desk.me.state;
  const name = desk.me.name ? `${desk.me.name} (${desk.me.extension})` : desk.me.extension;
  $("me").textContent = `${name} — ${LABELS[state] || state}${desk.me.role === "supervisor" ? " — supervisor" : ""}`;
  for (const b of document.querySelectorAll("#my-state button")) {
    b.setAttribute("aria-pressed", String(b.dataset.state === state));
  }
}

function applyPresence(e) {
  const entry = desk.agents.get(e.extension);
  if (!entry) return;
  entry.data = { ...entry.data, state: e.state, since_ms: e.since_ms, reason: e.reason };
  for (const li of entry.rows) paint(li, entry.data);
  if (desk.me && e.extension === desk.me.extension) paintMe();
}

async function loadBoard() {
  const board = await api("GET", "/api/v1/board");
  desk.seq = board.seq;
  desk.groups = board.groups.map((g) => ({ name: g.name, members: g.agents.map((a) => a.extension) }));
  renderBoard(board);
  fillTargets(board);
  const list = await api("GET", "/api/v1/callbacks");
  desk.callbacks = new Map(list.map((c) => [c.id, c]));
  renderCallbacks();
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/v1/events?since=${desk.seq}`);
  desk.socket = ws;
  ws.onopen = () => { desk.retry = 1000; $("connection").textContent = "Live."; };
  ws.onmessage = async (m) => {
    const e = JSON.parse(m.data);
    if (e.type === "resync") {
      await loadBoard();
      return;
    }
    desk.seq = e.seq;
    if (e.type === "presence") applyPresence(e);
    if (e.type === "call" && desk.me && e.extension === desk.me.extension) onCall(e);
    if (e.type === "callback") applyCallback(e.callback);
    if (e.type === "attempt") showAttempt(e);
    if (e.type === "recording") onRecording(e);
    if (e.type === "attempt_progress") attemptProgress(e);
    if (e.type === "attempt_erased") eraseAttempt(e);
    if (e.type === "record_saved" && desk.pop && desk.pop.record && e.record.id === desk.pop.record.id) {
      $("record-status").textContent = "Saved.";
    }
  };
  ws.onclose = (ev) => {
    if (desk.socket !== ws) return;
    desk.socket = null;
    if (ev.code === 4001) { loggedOut("Your session ended; please log in again."); return; }
    $("connection").textContent = "Connection lost; reconnecting…";
    setTimeout(() => { if (desk.me) connect(); }, desk.retry);
    desk.retry = Math.min(desk.retry * 2, 15000);
  };
}

// ---- a campaign's customer: one record, on this agent's screen only ------
// It lives in `desk.attempt` and the card's DOM until the PBX says the
// attempt is over; then both are cleared.

const OUTCOMES = {
  connected: "the customer was connected", busy: "the customer was busy", no_answer: "the customer did not answer",
  failed: "the call failed", skipped: "you skipped the customer", agent_timeout: "no confirmation in time",
  agent_dropped: "your side ended first (the customer heard the farewell)", do_not_call: "the number is on the do-not-call list", interrupted: "the PBX stopped",
};

function showAttempt(e) {
  desk.attempt = { callId: e.call_id, deadline: Date.now() + e.confirm_secs * 1000, timer: null, phase: null };
  if (desk.pop && desk.pop.callId === e.call_id) {
    // The campaign's call to this agent is not a caller to pop up.
    desk.pop = null;
    $("pop").hidden = true;
  }
  $("attempt-idle").hidden = true;
  $("attempt-card").hidden = false;
  $("attempt-campaign").textContent = `${e.title}: confirm to call this customer.`;
  $("attempt-name").textContent = e.customer.name || e.customer.number;
  $("attempt-number").textContent = e.customer.time_zone ? `${e.customer.number} (${e.customer.time_zone})` : e.customer.number;
  const dl = $("attempt-fields");
  dl.textContent = "";
  for (const [k, v] of Object.entries(e.customer.fields)) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  $("attempt-decide").hidden = false;
  const tick = () => {
    const left = Math.max(0, Math.ceil((desk.attempt.deadline - Date.now()) / 1000));
    $("attempt-state").textContent = `Confirm or skip within ${left} s.`;
  };
  tick();
  desk.attempt.timer = setInterval(tick, 1000);
}

function attemptProgress(e) {
  if (!desk.attempt || desk.attempt.callId !== e.call_id) return;
  clearInterval(desk.attempt.timer);
  desk.attempt.phase = e.phase;
  $("attempt-decide").hidden = true;
  $("attempt-state").textContent = e.phase === "connected" ? "Connected." : "Calling the customer…";
}

function eraseAttempt(e) {
  if (!desk.attempt || desk.attempt.callId !== e.call_id) return;
  clearInterval(desk.attempt.timer);
  desk.attempt = null;
  for (const id of ["attempt-campaign", "attempt-name", "attempt-number", "attempt-fields", "attempt-state"]) $(id).textContent = "";
  $("attempt-card").hidden = true;
  $("attempt-idle").hidden = false;
  $("attempt-idle").textContent = `The campaign call ended: ${OUTCOMES[e.outcome] || e.outcome}. No campaign customer for you now.`;
}

async function decideAttempt(action) {
  if (!desk.attempt) return;
  $("attempt-decide").hidden = true;
  try {
    await api("POST", `/api/v1/attempt/${action}`);
    // The PBX's progress may have come first: it is not overwritten.
    if (action === "confirm" && desk.attempt && !desk.attempt.phase) {
      clearInterval(desk.attempt.timer);
      $("attempt-state").textContent = "Calling the customer…";
    }
  } catch (e) {
    if (desk.attempt) $("attempt-state").textContent = `Not done: ${e.message}`;
  }
}

$("attempt-confirm").addEventListener("click", () => decideAttempt("confirm"));
$("attempt-skip").addEventListener("click", () => decideAttempt("skip"));

// ---- the screen pop: one per call, replaced by the next call --------------

function when(ms) {
  return new Date(ms).toLocaleString();
}

// A player for call recording `rec` of customer `number`.
function recordingPlayer(number, rec) {
  const label = document.createElement("label");
  label.className = "recording";
  label.textContent = `Call recording (${length(rec.ms)}, ${rec.agent}) `;
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "none";
  audio.src = `/api/v1/customers/${encodeURIComponent(number)}/recordings/${rec.id}/audio`;
  label.append(audio);
  return label;
}

// The records of a customer's history, each with its call's recordings (the
// ones I may hear); recordings of calls without a record follow.
function renderHistory(ol, history, number, recordings = []) {
  ol.textContent = "";
  const byCall = new Map();
  for (const rec of recordings) {
    if (!byCall.has(rec.call_id)) byCall.set(rec.call_id, []);
    byCall.get(rec.call_id).push(rec);
  }
  for (const r of history) {
    for (const rec of byCall.get(r.call_id) || []) rec.shown = true;
  }
  const loose = recordings.filter((rec) => !rec.shown);
  if (!history.length && !loose.length) {
    const li = document.createElement("li");
    li.textContent = "No earlier conversations.";
    ol.append(li);
    return;
  }
  for (const r of history) {
    const li = document.createElement("li");
    const head = document.createElement("strong");
    head.textContent = `${when(r.time_ms)} — ${r.agent} — ${r.outcome}`;
    li.append(head);
    if (r.notes) {
      const notes = document.createElement("div");
      notes.textContent = r.notes;
      li.append(notes);
    }
    // A closed call-back: its voice messages, playable here too.
    const cb = /^callback-(\d+)$/.exec(r.call_id);
    if (cb) {
      api("GET", `/api/v1/callbacks/${cb[1]}`).then((c) => li.append(...voicePlayers(c))).catch(() => {});
    }
    for (const rec of byCall.get(r.call_id) || []) li.append(recordingPlayer(number, rec));
    ol.append(li);
  }
  for (const rec of loose) {
    const li = document.createElement("li");
    const head = document.createElement("strong");
    head.textContent = `${when(rec.start_ms)} — ${rec.agent}`;
    li.append(head, recordingPlayer(number, rec));
    ol.append(li);
  }
}

// A customer's recordings that I may hear (none if they cannot be read).
async function recordingsOf(number) {
  try {
    return await api("GET", `/api/v1/customers/${encodeURIComponent(number)}/recordings`);
  } catch {
    return [];
  }
}

async function onCall(e) {
  if (e.phase === "ringing") {
    if (e.direction !== "recipient") return;
    const pop = e.pop || { caller: e.peer, name: null, history: [] };
    desk.pop = { callId: e.call_id, caller: pop.caller, record: null, history: pop.history, recording: null };
    $("pop").hidden = false;
    $("pop-who").textContent = pop.name ? `${pop.name} (${pop.caller})` : pop.caller;
    $("pop-state").textContent = "Ringing…";
    $("record-form").hidden = true;
    $("transfer-form").hidden = true;
    $("transfer-status").textContent = "";
    $("record-status").textContent = "";
    $("record-name").value = pop.name || "";
    $("cb-customer").value = pop.caller;
    $("cb-name").value = pop.name || "";
    $("record-notes").value = "";
    showRecording(null);
    $("recording-controls").hidden = true;
    renderHistory($("pop-history"), pop.history, pop.caller);
    recordingsOf(pop.caller).then((recs) => {
      if (recs.length && desk.pop && desk.pop.caller === pop.caller) {
        renderHistory($("pop-history"), pop.history, pop.caller, recs);
      }
    });
    return;
  }
  if (!desk.pop || desk.pop.callId !== e.call_id) return;
  if (e.phase === "answered") {
    $("pop-state").textContent = "On the call.";
    $("transfer-form").hidden = false;
    $("recording-controls").hidden = false;
    openRecord();
  } else if (e.phase === "ended") {
    $("pop-state").textContent = "Call ended.";
    $("transfer-form").hidden = true;
    $("recording-controls").hidden = true;
  }
}

// Recording the call on screen: the button starts and stops it; the agent's
// stream says when it started (also from the phone's code), saved or failed.
function showRecording(id, text = "") {
  if (desk.pop) desk.pop.recording = id;
  const button = $("recording-toggle");
  button.textContent = id ? "Stop recording" : "Record call";
  button.setAttribute("aria-pressed", id ? "true" : "false");
  $("recording-status").textContent = text;
}

function onRecording(e) {
  if (!desk.pop || desk.pop.callId !== e.call_id) return;
  const p = e.progress;
  if (p.state === "started") showRecording(e.id, "● Recording");
  if (p.state === "saved") {
    if (desk.pop.recording === e.id) showRecording(null);
    $("recording-status").textContent = `Recording saved (${length(p.recording.ms)}).`;
    recordingsOf(desk.pop.caller).then((recs) => {
      renderHistory($("pop-history"), desk.pop.history || [], desk.pop.caller, recs);
    });
  }
  if (p.state === "failed") showRecording(null, `Recording failed: ${p.reason}`);
}

$("recording-toggle").addEventListener("click", async () => {
  const pop = desk.pop;
  if (!pop) return;
  const path = `/api/v1/me/calls/${encodeURIComponent(pop.callId)}/recording`;
  try {
    if (pop.recording) {
      const id = pop.recording;
      await api("DELETE", path);
      // The stream may have said "saved" already.
      if (pop.recording === id) showRecording(null, "Saving the recording…");
    } else {
      const started = await api("POST", path);
      showRecording(started.id, "● Recording");
    }
  } catch (e) {
    $("recording-status").textContent = `Could not: ${e.message}`;
  }
});

// Transfer the call on screen: the caller is put through to the number (an
// extension, a ring group, a queue); my phone is released when it answers.
$("transfer-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const pop = desk.pop;
  const to = $("transfer-to").value.trim();
  if (!pop || !to) return;
  $("transfer-status").textContent = `Transferring to ${to}…`;
  try {
    await api("POST", `/api/v1/me/calls/${encodeURIComponent(pop.callId)}/transfer`, { to });
    $("transfer-status").textContent = `Transferring to ${to}: your phone is released when they answer.`;
  } catch (e) {
    $("transfer-status").textContent = `Could not transfer to ${to}: ${e.message}`;
  }
});

// Today's record of the call: the PBX opened one for a queue call; saving
// writes that one, or opens the agent's own for any other call.
function openRecord() {
  $("record-form").hidden = false;
}

$("record-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const pop = desk.pop;
  if (!pop) return;
  const body = { call_id: pop.callId, notes: $("record-notes").value, outcome: $("record-outcome").value };
  const name = $("record-name").value.trim();
  if (name) body.name = name;
  $("record-status").textContent = "Saving…";
  try {
    pop.record = await api("POST", `/api/v1/customers/${encodeURIComponent(pop.caller)}/records`, body);
    $("record-status").textContent = "Saved.";
  } catch (e) {
    $("record-status").textContent = `Not saved: ${e.message}`;
  }
});

async function loadDispositions() {
  const list = await api("GET", "/api/v1/dispositions");
  const select = $("record-outcome");
  select.textContent = "";
  for (const d of list) {
    const o = document.createElement("option");
    o.textContent = d;
    select.append(o);
  }
}

async function start() {
  try {
    desk.me = await api("GET", "/api/v1/me");
  } catch (e) {
    show("login");
    $("login-ext").focus();
    return;
  }
  show("desk");
  $("supervisor-links").hidden = desk.me.role !== "supervisor";
  await Promise.all([loadBoard(), loadDispositions(), loadForwarding(), loadVoicemail()]);
  connect();
  // Renew well before expiry; the event stream stays open.
  const left = desk.me.expires_at_ms - Date.now();
  clearInterval(desk.renewTimer);
  desk.renewTimer = setInterval(() => api("POST", "/api/v1/session/renew").catch(() => {}),
                                Math.max(60000, left / 2));
}

function loggedOut(message) {
  desk.me = null;
  clearInterval(desk.renewTimer);
  clearInterval(desk.voicemailTimer);
  if (desk.socket) { const s = desk.socket; desk.socket = null; s.close(); }
  show("login");
  $("login-error").textContent = message || "";
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await api("POST", "/api/v1/session", { extension: $("login-ext").value.trim(), password: $("login-pw").value });
    $("login-pw").value = "";
    await start();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
});

$("logout").addEventListener("click", async () => {
  await api("DELETE", "/api/v1/session").catch(() => {});
  loggedOut("Logged out.");
});

for (const b of document.querySelectorAll("#my-state button")) {
  b.addEventListener("click", async () => {
    const body = { state: b.dataset.state };
    if (b.dataset.state === "away" && $("away-reason").value) body.reason = $("away-reason").value;
    try {
      await api("PUT", `/api/v1/agents/${encodeURIComponent(desk.me.extension)}/state`, body);
    } catch (e) {
      $("connection").textContent = e.message;
    }
  });
}

// ---- call forwarding: always, when busy, when not answered ---------------------

function forwardingPath() {
  return `/api/v1/agents/${encodeURIComponent(desk.me.extension)}/forwarding`;
}

function showForwarding(f) {
  const parts = [];
  if (f.always) parts.push(`every call goes to ${f.always}`);
  if (f.busy) parts.push(`when busy to ${f.busy}`);
  if (f.no_answer) parts.push(`when not answered within ${f.no_answer_secs || 20} s to ${f.no_answer}`);
  $("fwd-summary").textContent = parts.length ? `Forwarded: ${parts.join("; ")}.` : "Not forwarded.";
  $("fwd-always").value = f.always || "";
  $("fwd-busy").value = f.busy || "";
  $("fwd-no-answer").value = f.no_answer || "";
  $("fwd-secs").value = f.no_answer_secs || 0;
}

async function loadForwarding() {
  showForwarding(await api("GET", forwardingPath()));
}

$("fwd-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = {
    always: $("fwd-always").value.trim() || null,
    busy: $("fwd-busy").value.trim() || null,
    no_answer: $("fwd-no-answer").value.trim() || null,
    no_answer_secs: Number($("fwd-secs").value) || 0,
  };
  try {
    showForwarding(await api("PUT", forwardingPath(), body));
    $("fwd-status").textContent = "Saved.";
  } catch (e) {
    $("fwd-status").textContent = `Not saved: ${e.message}`;
  }
});

// ---- voicemail: my mailbox (hidden when I have none), checked every 20 s ------

function showVoicemail(box) {
  $("voicemail").hidden = false;
  const waiting = box.new ? `${box.new} new` : "no new messages";
  $("vm-summary").textContent = `Voicemail: ${waiting}, ${box.heard} heard.`;
  const list = $("vm-list");
  list.textContent = "";
  for (const m of box.messages) {
    const li = document.createElement("li");
    li.className = m.heard ? "vm-heard" : "vm-new";
    const who = m.caller_name ? `${m.caller_name} (${m.caller})` : m.caller;
    const head = document.createElement("strong");
    head.textContent = `${m.heard ? "" : "New: "}${who}, ${new Date(m.at_ms).toLocaleString()}, ${length(m.ms)}`;
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = `/api/v1/me/voicemail/${m.id}/audio`;
    audio.setAttribute("aria-label", `Message from ${who}`);
    li.append(head, document.createElement("br"), audio);
    if (!m.heard) {
      const heard = document.createElement("button");
      heard.type = "button";
      heard.textContent = "Mark heard";
      heard.addEventListener("click", () => voicemailAction("POST", `/api/v1/me/voicemail/${m.id}/heard`, "Marked heard."));
      audio.addEventListener("ended", () => heard.click(), { once: true });
      li.append(heard);
    }
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "Delete";
    del.addEventListener("click", () => {
      if (confirm(`Delete the message from ${who}?`)) {
        voicemailAction("DELETE", `/api/v1/me/voicemail/${m.id}`, "Deleted.");
      }
    });
    li.append(del);
    list.append(li);
  }
}

async function loadVoicemail() {
  try {
    showVoicemail(await api("GET", "/api/v1/me/voicemail"));
    clearInterval(desk.voicemailTimer);
    desk.voicemailTimer = setInterval(() => loadVoicemail().catch(() => {}), 20000);
  } catch (e) {
    if (e.status !== 404) throw e;
    $("voicemail").hidden = true; // no mailbox
  }
}

async function voicemailAction(method, path, done) {
  try {
    await api(method, path);
    $("vm-status").textContent = done;
  } catch (e) {
    $("vm-status").textContent = `Not done: ${e.message}`;
  }
  await loadVoicemail().catch(() => {});
}

$("vm-refresh").addEventListener("click", () => loadVoicemail().catch((e) => {
  $("vm-status").textContent = e.message;
}));

// ---- the call-back box: P (mine) and G (my groups'), oldest first -------------

function fillTargets(board) {
  const sel = $("cb-target");
  sel.textContent = "";
  for (const g of board.groups) {
    const o = document.createElement("option");
    o.value = `group:${g.name}`;
    o.textContent = `Group ${g.name}`;
    sel.append(o);
  }
  for (const a of board.groups.flatMap((g) => g.agents).concat(board.ungrouped)) {
    if ([...sel.options].some((o) => o.value === `agent:${a.extension}`)) continue;
    const o = document.createElement("option");
    o.value = `agent:${a.extension}`;
    o.textContent = a.name ? `${a.name} (${a.extension})` : a.extension;
    sel.append(o);
  }
}

function applyCallback(c) {
  const before = desk.callbacks.get(c.id);
  if (c.flagged_ms && c.status.state === "open" && !(before && before.flagged_ms)) {
    const who = c.name ? `${c.name} (${c.customer})` : c.customer;
    const target = c.target.group ? `group ${c.target.group}` : c.target.agent;
    $("cb-alert").textContent = `Waiting too long: the call-back to ${who} for ${target}, open since ${when(c.created_ms)}.`;
  }
  if (c.status.state === "done") desk.callbacks.delete(c.id);
  else desk.callbacks.set(c.id, c);
  renderCallbacks();
}

function length(ms) {
  const s = Math.ceil(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// A player per voice message of call-back `c` (same origin: the session cookie
// authorises the audio request).
function voicePlayers(c) {
  return (c.voice || []).map((v, i) => {
    const label = document.createElement("label");
    label.className = "voice";
    label.textContent = `Voice message ${i + 1} (${length(v.ms)}) `;
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = `/api/v1/callbacks/${c.id}/voice/${v.id}`;
    label.append(audio);
    return label;
  });
}

function isPersonal(c) {
  return c.target.agent !== undefined && desk.me && c.target.agent === desk.me.extension;
}

function lamp(id, textId, label, items) {
  const mine = items.filter((c) => c.status.state === "in_progress" && c.status.by === desk.me.extension);
  const waiting = items.filter((c) => c.status.state === "open");
  const el = $(id);
  el.className = "lamp";
  let text = `${label}: none`;
  if (mine.length) {
    el.classList.add("handling");
    text = `${label}: you are handling ${mine.length}` + (waiting.length ? `, ${waiting.length} waiting` : "");
  } else if (waiting.length) {
    el.classList.add("waiting");
    text = `${label}: ${waiting.length} waiting`;
  }
  $(textId).textContent = text;
}

function renderCallbacks() {
  if (!desk.me) return;
  const all = [...desk.callbacks.values()].sort((a, b) => a.id - b.id);
  lamp("lamp-p", "lamp-p-text", "Personal", all.filter(isPersonal));
  lamp("lamp-g", "lamp-g-text", "Group", all.filter((c) => !isPersonal(c)));
  const ol = $("cb-list");
  ol.textContent = "";
  for (const c of all) {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    if (c.flagged_ms) li.classList.add("flagged");
    const head = document.createElement("strong");
    const kind = isPersonal(c) ? "P" : "G";
    const who = c.name ? `${c.name} (${c.customer})` : c.customer;
    head.textContent = `${kind} · ${who}`;
    const msg = document.createElement("div");
    msg.textContent = c.message;
    const state = document.createElement("span");
    state.className = "cb-state";
    const target = c.target.group ? `group ${c.target.group}` : `${c.target.agent}`;
    const flags = (c.escalated_ms ? " · offered to the group" : "") + (c.flagged_ms ? " · waiting too long" : "");
    state.textContent = c.status.state === "in_progress"
      ? `In progress by ${c.status.by} since ${new Date(c.status.since_ms).toLocaleTimeString()} · for ${target}${flags}`
      : `Open since ${when(c.created_ms)} · written by ${c.written_by} · for ${target}${flags}`;
    li.append(head, msg, ...voicePlayers(c), state);
    const act = (label, path, body) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.setAttribute("aria-label", `${label}: call-back for ${who}`);
      b.addEventListener("click", async () => {
        try {
          applyCallback(await api("POST", `/api/v1/callbacks/${c.id}/${path}`, body ? body() : {}));
        } catch (e) {
          $("cb-status").textContent = `${label} failed: ${e.message}`;
        }
      });
      li.append(b);
    };
    if (c.status.state === "open") act("Claim", "claim");
    if (c.status.state === "in_progress" && c.status.by === desk.me.extension) {
      const call = document.createElement("button");
      call.type = "button";
      call.textContent = "Call";
      call.setAttribute("aria-label", `Call ${who}`);
      call.addEventListener("click", () => { showCustomer({ number: c.customer, name: c.name }); dial(c.customer); });
      li.append(call);
      const note = document.createElement("input");
      note.setAttribute("aria-label", `Note for the call-back to ${who}`);
      note.placeholder = "note";
      li.append(note);
      act("Succeeded", "close", () => ({ outcome: "succeeded", note: note.value }));
      act("Failed", "close", () => ({ outcome: "failed", note: note.value }));
      act("Release", "release");
    }
    ol.append(li);
  }
}

$("cb-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const [kind, name] = $("cb-target").value.split(/:(.*)/s);
  // One key per call-back written: a retry after a lost answer is the same one.
  desk.cbKey = desk.cbKey || `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const body = {
    request_key: desk.cbKey,
    customer: $("cb-customer").value.trim(),
    name: $("cb-name").value.trim(),
    message: $("cb-message").value.trim(),
    target: { [kind]: name },
  };
  $("cb-status").textContent = "Saving…";
  try {
    await api("POST", "/api/v1/callbacks", body);
    $("cb-status").textContent = "Call-back saved.";
    $("cb-message").value = "";
    desk.cbKey = null;
  } catch (e) {
    $("cb-status").textContent = `Not saved: ${e.message}`;
  }
});

// ---- customer history search ------------------------------------------------

function who(c) {
  return c.name ? `${c.name} (${c.number})` : c.number;
}

async function showCustomer(c) {
  const history = await api("GET", `/api/v1/customers/${encodeURIComponent(c.number)}/history`);
  $("customer").hidden = false;
  $("customer").dataset.number = c.number;
  $("customer-who").textContent = who(c);
  renderHistory($("customer-history"), history, c.number, await recordingsOf(c.number));
}

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("search-q").value.trim();
  const list = $("search-results");
  list.textContent = "";
  $("customer").hidden = true;
  try {
    const found = await api("GET", `/api/v1/customers?q=${encodeURIComponent(q)}`);
    $("search-status").textContent = found.length
      ? `${found.length} customer${found.length === 1 ? "" : "s"} found.`
      : `No customer matches “${q}”.`;
    for (const c of found) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${who(c)} — ${c.records} record${c.records === 1 ? "" : "s"}, last ${when(c.last_ms)}`;
      b.addEventListener("click", () => showCustomer(c));
      li.append(b);
      list.append(li);
    }
  } catch (e) {
    $("search-status").textContent = `Search failed: ${e.message}`;
  }
});

$("customer-call").addEventListener("click", () => dial($("customer").dataset.number));

$("dial-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  dial($("dial-to").value.trim());
});

async function dial(to) {
  $("dial-status").textContent = `Calling ${to}: your phone rings first…`;
  try {
    await api("POST", "/api/v1/calls", { to });
    $("dial-status").textContent = `Answer your phone to call ${to}.`;
  } catch (e) {
    $("dial-status").textContent = `Could not call ${to}: ${e.message}`;
  }
}

setInterval(() => {
  for (const el of document.querySelectorAll(".since[data-since]")) el.textContent = since(Number(el.dataset.since));
}, 1000);

start();
