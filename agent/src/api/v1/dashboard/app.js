"use strict";
// The Tidemark dashboard: everything it shows comes from the management
// API on this origin, with the session its login opened (kept in this
// tab's sessionStorage). Data is only ever put into the page as text.

const RANK = { viewer: 0, operator: 1, "dr-admin": 2, admin: 3 };
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
const POLL_MS = 3000;
// The API's idle limit counts requests, and the page polls: it counts input.
const IDLE_MS = 30 * 60 * 1000;
// The checkpoint list can be long (a month of history): fetched less often.
const CHECKPOINTS_MS = 15000;
const ui = { role: null, agentRole: null, selected: null, timer: null, pending: null, listed: { vpg: null, at: 0 } };

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem("tidemark-session");
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
  }
  if (response.status === 401 && path !== "/api/v1/login") loggedOut("Your session ended; log in again.");
  return { status: response.status, data };
}

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function time(ms) {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function loggedOut(why) {
  sessionStorage.removeItem("tidemark-session");
  clearTimeout(ui.timer);
  ui.timer = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-panel").hidden = false;
  if (why) {
    const p = $("login-form");
    let note = $("login-note");
    if (!note) {
      note = document.createElement("p");
      note.id = "login-note";
      p.appendChild(note);
    }
    note.textContent = why;
  }
}

async function login(event) {
  event.preventDefault();
  const body = { user: $("login-user").value, password: $("login-password").value };
  const code = $("login-totp").value.trim();
  if (code) body.totp = code;
  const r = await api("POST", "/api/v1/login", body);
  $("login-password").value = "";
  $("login-totp").value = "";
  if (r.status !== 200) {
    loggedOut(r.data && r.data.totp_required ? "This role needs a TOTP code." : (r.data && r.data.error) || "Login failed.");
    return;
  }
  sessionStorage.setItem("tidemark-session", r.data.token);
  await start();
}

async function start() {
  const me = await api("GET", "/api/v1/whoami");
  if (me.status !== 200) return;
  ui.role = me.data.role;
  $("who").textContent = me.data.user + " (" + me.data.role + ")";
  $("login-panel").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  ui.lastInput = Date.now();
  await refresh();
  schedule();
}

// The next poll starts when this one has ended (slow answers never pile up).
function schedule() {
  ui.timer = setTimeout(async () => {
    if (Date.now() - ui.lastInput > IDLE_MS) {
      await api("POST", "/api/v1/logout", {});
      return loggedOut("Logged out after 30 minutes without input.");
    }
    await refresh();
    if (ui.timer !== null) schedule();
  }, POLL_MS);
}

async function refresh() {
  const [status, history, audit] = await Promise.all([
    api("GET", "/api/v1/status"),
    api("GET", "/api/v1/history"),
    api("GET", "/api/v1/audit?limit=50"),
  ]);
  if (status.status === 200) renderStatus(status.data);
  if (history.status === 200) renderChart(history.data);
  if (audit.status === 200) renderAudit(audit.data.entries);
  if (ui.selected) await renderDetail();
}

function renderStatus(s) {
  ui.agentRole = s.role;
  $("agent").textContent = "(" + s.role + " appliance " + s.node + ")";
  const body = $("vpgs").tBodies[0];
  body.replaceChildren();
  for (const v of s.vpgs) {
    const row = document.createElement("tr");
    row.className = "vpg" + (v.name === ui.selected ? " selected" : "");
    row.id = "vpg-" + v.name;
    row.dataset.vpg = v.name;
    cell(row, v.name);
    cell(row, v.state).className = "state";
    cell(row, v.lag_seconds.toFixed(1) + " s").className = "rpo";
    cell(row, bytes(v.throughput_bytes_per_sec) + "/s");
    cell(row, v.last_checkpoint ? v.last_checkpoint.id + " " + (v.last_checkpoint.tag || "") : "-");
    cell(row, [v.note, v.alert].filter(Boolean).join("; ")).className = "note";
    row.addEventListener("click", () => select(v.name));
    body.appendChild(row);
  }
  if (!ui.selected && s.vpgs.length) select(s.vpgs[0].name);
}

function renderChart(h) {
  const svg = $("rpo-chart");
  svg.replaceChildren();
  const names = new Set();
  for (const sample of h.samples) Object.keys(sample.vpgs).forEach((n) => names.add(n));
  // The hour, or less while the agent has not been up that long.
  const end = Date.now();
  const first = h.samples.length ? h.samples[0].time_ms : end;
  const begin = Math.max(end - 3600 * 1000, Math.min(first, end - 60 * 1000));
  let max = 1;
  for (const sample of h.samples) for (const p of Object.values(sample.vpgs)) max = Math.max(max, p.lag_seconds);
  let i = 0;
  for (const name of names) {
    const points = h.samples
      .filter((s) => s.vpgs[name])
      .map((s) => {
        const x = ((s.time_ms - begin) / (end - begin)) * 600;
        const y = 155 - (s.vpgs[name].lag_seconds / max) * 150;
        return x.toFixed(1) + "," + y.toFixed(1);
      });
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("stroke", COLORS[i++ % COLORS.length]);
    line.setAttribute("class", "series");
    line.dataset.vpg = name;
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = name;
    line.appendChild(title);
    svg.appendChild(line);
  }
  $("chart-scale").textContent = "from " + time(begin) + " to " + time(end) + "; top of the chart: " + max.toFixed(1) +
    " s; " + h.samples.length + " samples, one every " + h.interval_s + " s";
}

function renderAudit(entries) {
  const body = $("audit").tBodies[0];
  body.replaceChildren();
  for (const e of entries.slice().reverse()) {
    const row = document.createElement("tr");
    cell(row, e.seq);
    cell(row, time(e.time_ms));
    cell(row, e.user + " [" + e.role + "]");
    cell(row, e.source);
    cell(row, e.op);
    cell(row, e.outcome);
    body.appendChild(row);
  }
}

async function select(name) {
  if (name !== ui.selected) {
    // A question about another VPG is not answered by a click here.
    $("confirm").hidden = true;
    ui.pending = null;
  }
  ui.selected = name;
  for (const row of document.querySelectorAll("tr.vpg")) row.classList.toggle("selected", row.dataset.vpg === name);
  $("vpg-detail").hidden = false;
  $("detail-name").textContent = name;
  await renderDetail();
}

async function renderDetail() {
  const recovery = ui.agentRole === "recovery";
  const rank = RANK[ui.role] || 0;
  $("checkpoint-row").hidden = !recovery;
  $("act-test-start").hidden = !(recovery && rank >= RANK.operator);
  $("act-test-stop").hidden = !(recovery && rank >= RANK.operator);
  $("act-failover").hidden = !(recovery && rank >= RANK["dr-admin"]);
  if (!recovery) return;
  if (ui.listed.vpg === ui.selected && Date.now() - ui.listed.at < CHECKPOINTS_MS) return;
  ui.listed = { vpg: ui.selected, at: Date.now() };
  const r = await api("GET", "/api/v1/vpgs/" + encodeURIComponent(ui.selected) + "/checkpoints");
  if (r.status !== 200) return;
  const select = $("checkpoint-select");
  const chosen = select.value;
  select.replaceChildren();
  const body = $("checkpoints").tBodies[0];
  body.replaceChildren();
  for (const c of r.data.checkpoints.slice().reverse().slice(0, 200)) {
    const state = !c.consistent ? (c.resync ? "inconsistent" : "partial") : c.pinned ? "pinned" : c.after_alert ? "suspect" : "complete";
    const row = document.createElement("tr");
    cell(row, c.id);
    cell(row, time(c.time_ms));
    cell(row, state);
    cell(row, c.tag);
    body.appendChild(row);
    if (!c.consistent) continue;
    const option = document.createElement("option");
    option.value = String(c.id);
    option.textContent = c.id + " " + time(c.time_ms) + (c.tag ? " " + c.tag : "");
    select.appendChild(option);
  }
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

function ask(text, run) {
  ui.pending = run;
  $("confirm-text").textContent = text;
  $("confirm").hidden = false;
}

async function confirmed() {
  $("confirm").hidden = true;
  const run = ui.pending;
  ui.pending = null;
  if (run) await run();
}

function checkpointText() {
  const select = $("checkpoint-select");
  const option = select.options[select.selectedIndex];
  return option ? option.textContent : null;
}

async function operate(method, what, path, body) {
  const r = await api(method, path, body);
  if (r.status === 200) say(what + ": done. " + ((r.data && r.data.message) || "") + " " + ((r.data && r.data.exports) || []).join(" "), true);
  else say(what + " refused (" + r.status + "): " + ((r.data && r.data.error) || ""), false);
  ui.listed.at = 0;
  await refresh();
}

function wire() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", async () => {
    await api("POST", "/api/v1/logout", {});
    loggedOut("Logged out.");
  });
  $("confirm-yes").addEventListener("click", confirmed);
  $("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; ui.pending = null; });
  // The VPG and checkpoint are taken when the button is pressed: what the
  // confirmation names is what runs.
  const vpgPath = (vpg, tail) => "/api/v1/vpgs/" + encodeURIComponent(vpg) + tail;
  $("act-test-start").addEventListener("click", () => {
    const cp = checkpointText(), vpg = ui.selected, id = $("checkpoint-select").value;
    if (!cp) return say("No restorable checkpoint to test.", false);
    ask("Start a test failover of VPG " + vpg + " at checkpoint " + cp + "?", () =>
      operate("POST", "Test failover start", vpgPath(vpg, "/test-failover"), { checkpoint: id }));
  });
  $("act-test-stop").addEventListener("click", () => {
    const vpg = ui.selected;
    ask("Stop the test failover of VPG " + vpg + " and discard its writes?", () =>
      operate("DELETE", "Test failover stop", vpgPath(vpg, "/test-failover")));
  });
  $("act-failover").addEventListener("click", () => {
    const cp = checkpointText(), vpg = ui.selected, id = $("checkpoint-select").value;
    if (!cp) return say("No restorable checkpoint to fail over to.", false);
    ask("FAIL OVER VPG " + vpg + " to checkpoint " + cp + "? The replica stops taking the stream.", () =>
      operate("POST", "Failover", vpgPath(vpg, "/failover"), { checkpoint: id }));
  });
  // Polling keeps the session alive: a tab nobody uses logs itself out.
  for (const kind of ["click", "keydown", "mousemove"]) {
    document.addEventListener(kind, () => { ui.lastInput = Date.now(); }, { passive: true });
  }
  if (sessionStorage.getItem("tidemark-session")) start();
}

document.addEventListener("DOMContentLoaded", wire);
