// mobula dashboard: a single-page app over the state API (/api/v0/...), the Jobs API
// (/api/jobs/...) and the live stream (/api/dashboard/stream). No build step, no libraries.
"use strict";

const PAGE = 50;          // rows per table page
const HISTORY = 300;      // snapshots kept for the charts (5 minutes at 1/s)
const view = document.getElementById("view");
const ui = { snap: null, history: [], pages: {}, busy: false, route: "" };

function esc(v) {
  return String(v == null ? "" : v).replace(/[&<>"']/g, c =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function short(id) { return id ? String(id).slice(0, 12) : ""; }
function fmtTime(ms) { return ms ? new Date(Number(ms)).toLocaleString() : ""; }
function fmtBytes(b) {
  if (b == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; b = Number(b);
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + u[i];
}

class Unauthorized extends Error {}

async function fetchText(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (r.status === 401 || r.status === 403) { showLogin(r.status); throw new Unauthorized(path); }
  const body = await r.text();
  if (!r.ok) throw new Error(r.status + " " + path + ": " + body);
  return body;
}
async function api(path) { return JSON.parse(await fetchText(path)); }
// The state API's envelope: {"result":true,"msg":"","data":{"result":{...}}}.
async function stateApi(path) {
  const v = await api(path);
  if (v && v.result === false) throw new Error(v.msg || "state API error");
  return v && v.data ? v.data.result : v;
}

function showLogin(status) {
  const f = document.getElementById("login");
  f.hidden = false;
  document.getElementById("login-msg").textContent = status === 403 ? "wrong token" : "";
}
document.getElementById("login").addEventListener("submit", async ev => {
  ev.preventDefault();
  const token = document.getElementById("token").value.trim();
  const r = await fetch("/api/authenticate", {
    method: "POST", credentials: "same-origin",
    headers: { "Authorization": "Bearer " + token },
  });
  if (r.ok) {
    document.getElementById("login").hidden = true;
    connect();
    render();
  } else {
    document.getElementById("login-msg").textContent = "sign-in failed (" + r.status + ")";
  }
});

// ---- live stream ----
let source = null;
function connect() {
  if (source) source.close();
  source = new EventSource("/api/dashboard/stream");
  const live = document.getElementById("live");
  source.addEventListener("snapshot", ev => {
    let snap;
    try { snap = JSON.parse(ev.data); } catch (_) { return; }
    live.className = "live"; live.textContent = "live";
    ui.snap = snap;
    ui.history.push(snap);
    if (ui.history.length > HISTORY) ui.history.shift();
    refresh();
  });
  source.onerror = async () => {
    live.className = "live off"; live.textContent = "offline";
    // A 401 closes the stream for good: find out, and ask for the token.
    if (source.readyState === EventSource.CLOSED) {
      try { await fetchText("/api/version"); setTimeout(connect, 2000); } catch (_) { }
    }
  };
}

// ---- tables with pages ----
// rows: the page's rows; total: all rows the server knows of.
function pager(key, total) {
  const page = ui.pages[key] || 0;
  const pages = Math.max(1, Math.ceil(total / PAGE));
  return `<div class="pager" data-pager="${esc(key)}">
    <button data-step="-1" ${page <= 0 ? "disabled" : ""}>&lsaquo; prev</button>
    <span>page ${page + 1} of ${pages} (${total} rows)</span>
    <button data-step="1" ${page + 1 >= pages ? "disabled" : ""}>next &rsaquo;</button></div>`;
}
view.addEventListener("click", ev => {
  const b = ev.target.closest("button[data-step]");
  if (!b) return;
  const key = b.parentElement.dataset.pager;
  ui.pages[key] = Math.max(0, (ui.pages[key] || 0) + Number(b.dataset.step));
  render();
});
function table(id, cols, rows) {
  const head = cols.map(c => `<th>${esc(c[0])}</th>`).join("");
  const body = rows.map(r => "<tr>" + cols.map(c => `<td>${c[1](r)}</td>`).join("") + "</tr>").join("");
  return `<table id="${id}"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}
function stateCell(s) { return `<span class="state-${esc(s)}">${esc(s)}</span>`; }
// A page of a state API list: asks the server for up to the page's last row (Ray's `limit`)
// and keeps the page's slice.
async function statePage(key, path) {
  const page = ui.pages[key] || 0;
  const sep = path.includes("?") ? "&" : "?";
  const r = await stateApi(`${path}${sep}limit=${(page + 1) * PAGE}&detail=true`);
  const all = (r && r.result) || [];
  return { rows: all.slice(page * PAGE, (page + 1) * PAGE), total: (r && (r.num_filtered ?? r.total)) || all.length };
}

// ---- charts ----
const SERIES = [["CPU", "CPU"], ["GPU", "GPU"], ["memory", "Memory"], ["object_store_memory", "Object store"]];
const COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795"];
function used(n, key) {
  const t = (n.total || {})[key] || 0;
  return t ? (t - ((n.available || {})[key] || 0)) / t : null;
}
function drawChart(canvas, key) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#e2e8f0"; ctx.beginPath();
  for (const f of [0, .5, 1]) { ctx.moveTo(0, h - f * (h - 4) - 2); ctx.lineTo(w, h - f * (h - 4) - 2); }
  ctx.stroke();
  const ids = [];
  for (const s of ui.history) for (const n of s.nodes || []) if (!ids.includes(n.node_id)) ids.push(n.node_id);
  ids.forEach((id, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length]; ctx.lineWidth = 1.5; ctx.beginPath();
    let started = false;
    ui.history.forEach((s, x) => {
      const n = (s.nodes || []).find(m => m.node_id === id);
      const u = n && n.alive ? used(n, key) : null;
      if (u == null) { started = false; return; }
      const px = (x + HISTORY - ui.history.length) * w / (HISTORY - 1), py = h - u * (h - 4) - 2;
      if (started) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      started = true;
    });
    ctx.stroke();
  });
}

// ---- pages ----
function usageCell(n, key, bytes) {
  const t = (n.total || {})[key];
  if (!t) return "";
  const u = t - ((n.available || {})[key] || 0);
  const show = bytes ? `${fmtBytes(u)} / ${fmtBytes(t)}` : `${+u.toFixed(2)} / ${t}`;
  return `<span class="bar"><i style="width:${Math.min(100, 100 * u / t)}%"></i></span> ${show}`;
}
async function overview() {
  const s = ui.snap;
  if (!s) return "<h2>Overview</h2><p>waiting for the live stream…</p>";
  if (s.error) return `<h2>Overview</h2><p class="err">${esc(s.error)}</p>`;
  const nodes = s.nodes || [];
  const ids = nodes.map(n => n.node_id);
  const cards = `<div class="cards">
    <div class="card"><div>Nodes alive</div><div class="big" id="nodes-alive">${s.nodes_alive}</div><div>${s.nodes_dead} dead</div></div>
    <div class="card"><div>CPU in use</div><div class="big">${+((s.total.CPU || 0) - (s.available.CPU || 0)).toFixed(2)} / ${s.total.CPU || 0}</div></div>
    <div class="card"><div>GPU in use</div><div class="big">${+((s.total.GPU || 0) - (s.available.GPU || 0)).toFixed(2)} / ${s.total.GPU || 0}</div></div>
    <div class="card"><div>Pending demands</div><div class="big">${(s.pending || []).reduce((a, d) => a + d.count, 0)}</div></div></div>`;
  const rows = table("nodes", [
    ["Node", n => `<span class="mono node-id">${esc(n.node_id)}</span>${n.is_head ? " (head)" : ""}`],
    ["State", n => stateCell(n.alive ? "ALIVE" : "DEAD")],
    ["CPU", n => usageCell(n, "CPU")],
    ["GPU", n => usageCell(n, "GPU")],
    ["Memory", n => usageCell(n, "memory", true)],
    ["Object store", n => usageCell(n, "object_store_memory", true)],
    ["Logs", n => `<a href="#/logs/${esc(n.node_id)}">logs</a>`],
  ], nodes);
  const legend = ids.map((id, i) => `<span style="color:${COLORS[i % COLORS.length]}">&#9632; ${esc(short(id))}</span>`).join(" ");
  const charts = SERIES.map(([k, label]) =>
    `<div class="card"><div>${esc(label)} used (fraction, last 5 min)</div><canvas class="chart" data-key="${k}" width="360" height="90"></canvas></div>`).join("");
  return `<h2>Overview</h2>${cards}<h3>Nodes</h3>${rows}<h3>Usage over time</h3><p>${legend}</p><div class="cards">${charts}</div>`;
}
function afterOverview() {
  for (const c of view.querySelectorAll("canvas.chart")) drawChart(c, c.dataset.key);
}

async function jobs() {
  const list = await api("/api/jobs/");
  list.sort((a, b) => (b.start_time || 0) - (a.start_time || 0));
  const page = ui.pages.jobs || 0;
  const rows = list.slice(page * PAGE, (page + 1) * PAGE);
  return "<h2>Jobs</h2>" + table("jobs", [
    ["Submission", j => j.submission_id ? `<a class="mono" href="#/jobs/${esc(j.submission_id)}">${esc(j.submission_id)}</a>` : ""],
    ["Job id", j => `<span class="mono">${esc(j.job_id)}</span>`],
    ["Type", j => esc(j.type)],
    ["Status", j => stateCell(j.status)],
    ["Entrypoint", j => `<span class="mono">${esc(j.entrypoint)}</span>`],
    ["Started", j => esc(fmtTime(j.start_time))],
    ["Ended", j => esc(fmtTime(j.end_time))],
    ["Message", j => esc(j.message)],
  ], rows) + pager("jobs", list.length);
}
async function jobDetail(id) {
  const enc = encodeURIComponent(id);
  const [j, logs] = await Promise.all([api(`/api/jobs/${enc}`), api(`/api/jobs/${enc}/logs`)]);
  const keep = view.querySelector("pre.logs");
  const atEnd = !keep || keep.scrollTop + keep.clientHeight >= keep.scrollHeight - 4;
  ui.afterJob = atEnd;
  return `<h2>Job <span class="mono">${esc(id)}</span></h2>
    <p>Status: <b id="job-status">${stateCell(j.status)}</b> &middot; ${esc(j.message)}</p>
    <p>Entrypoint: <span class="mono">${esc(j.entrypoint)}</span> &middot; driver exit code ${esc(j.driver_exit_code)}</p>
    <p>Started ${esc(fmtTime(j.start_time))}${j.end_time ? " &middot; ended " + esc(fmtTime(j.end_time)) : ""}</p>
    <h3>Logs</h3><pre class="logs" id="job-logs">${esc(logs.logs)}</pre>`;
}

async function actors() {
  const { rows, total } = await statePage("actors", "/api/v0/actors");
  return "<h2>Actors</h2>" + table("actors", [
    ["Actor", a => `<span class="mono">${esc(a.actor_id)}</span>`],
    ["Class", a => esc(a.class_name)],
    ["Name", a => esc(a.name)],
    ["State", a => stateCell(a.state)],
    ["Node", a => `<span class="mono">${esc(short(a.node_id))}</span>`],
    ["PID", a => esc(a.pid)],
    ["Restarts", a => esc(a.num_restarts)],
    ["Death cause", a => esc(deathCause(a.death_cause))],
  ], rows) + pager("actors", total);
}
function deathCause(d) {
  if (!d) return "";
  if (typeof d === "string") return d;
  const c = d.actor_died_error_context || d.creation_task_failure_context || d;
  return c.error_message || c.reason || JSON.stringify(d);
}

async function tasks() {
  const [summary, failed] = await Promise.all([
    stateApi("/api/v0/tasks/summarize"),
    statePage("tasks-failed", "/api/v0/tasks?filter_keys=state&filter_predicates=%3D&filter_values=FAILED"),
  ]);
  // Ray's summaries: data.result.result.node_id_to_summary.cluster.
  const cluster = ((((summary || {}).result || {}).node_id_to_summary || {}).cluster || {});
  const byFunc = Object.values(cluster.summary || {});
  const byState = {};
  for (const f of byFunc) for (const [k, v] of Object.entries(f.state_counts || {})) byState[k] = (byState[k] || 0) + v;
  const states = Object.keys(byState).sort();
  const cards = `<div class="cards" id="task-states">${states.map(s =>
    `<div class="card"><div>${stateCell(s)}</div><div class="big">${byState[s]}</div></div>`).join("") || "<p>no tasks yet</p>"}</div>`;
  const funcs = table("task-funcs", [
    ["Function", f => `<span class="mono">${esc(f.func_or_class_name)}</span>`],
    ["Type", f => esc(f.type)],
    ...states.map(s => [s, f => esc((f.state_counts || {})[s] || 0)]),
  ], byFunc);
  const fails = table("task-failures", [
    ["Task", t => `<span class="mono">${esc(t.task_id)}</span>`],
    ["Function", t => esc(t.func_or_class_name || t.name)],
    ["Node", t => `<span class="mono">${esc(short(t.node_id))}</span>`],
    ["Error type", t => esc(t.error_type)],
    ["Error", t => `<span class="mono">${esc(t.error_message)}</span>`],
  ], failed.rows);
  return `<h2>Tasks</h2>${cards}<h3>By function</h3>${funcs}<h3>Recent failures</h3>${fails}${pager("tasks-failed", failed.total)}`;
}

async function placementGroups() {
  const { rows, total } = await statePage("pgs", "/api/v0/placement_groups");
  return "<h2>Placement groups</h2>" + table("pgs", [
    ["Placement group", p => `<span class="mono">${esc(p.placement_group_id)}</span>`],
    ["Name", p => esc(p.name)],
    ["State", p => stateCell(p.state)],
    ["Strategy", p => esc(p.strategy)],
    ["Bundles", p => `<span class="mono">${esc(JSON.stringify((p.bundles || []).map(b => b.unit_resources || b)))}</span>`],
  ], rows) + pager("pgs", total);
}

async function logs(node, file) {
  const nodes = ((ui.snap && ui.snap.nodes) || []);
  const list = `<p>Nodes: ${nodes.map(n => `<a class="mono" href="#/logs/${esc(n.node_id)}">${esc(short(n.node_id))}${n.is_head ? " (head)" : ""}</a>`).join(" &middot; ") || "waiting for the live stream…"}</p>`;
  if (!node) return `<h2>Logs</h2>${list}`;
  const enc = encodeURIComponent(node);
  if (file) {
    const text = await fetchText(`/api/v0/logs/file?node_id=${enc}&filename=${encodeURIComponent(file)}&lines=1000&filter_ansi_code=true`);
    let body = text;
    try { const v = JSON.parse(text); if (v && v.data) body = v.data.result; } catch (_) { }
    return `<h2>Logs</h2>${list}<h3><a href="#/logs/${esc(node)}">${esc(short(node))}</a> / <span class="mono">${esc(file)}</span></h3><pre class="logs" id="log-file">${esc(body)}</pre>`;
  }
  const cats = (await stateApi(`/api/v0/logs?node_id=${enc}`)) || {};
  const files = [];
  for (const [cat, names] of Object.entries(cats)) for (const f of names || []) files.push([cat, f]);
  return `<h2>Logs</h2>${list}<h3>Node <span class="mono">${esc(node)}</span></h3>` + table("log-files", [
    ["Category", r => esc(r[0])],
    ["File", r => `<a class="mono log-file" href="#/logs/${esc(node)}/${encodeURIComponent(r[1])}">${esc(r[1])}</a>`],
  ], files);
}

// ---- routing ----
function parts() { return location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent); }
async function build() {
  const [page, a, b] = parts();
  switch (page || "overview") {
    case "overview": return overview();
    case "jobs": return a ? jobDetail(a) : jobs();
    case "actors": return actors();
    case "tasks": return tasks();
    case "placement_groups": return placementGroups();
    case "logs": return logs(a, b);
    default: return `<h2>Not found</h2><p>No page ${esc(page)}.</p>`;
  }
}
async function render() {
  const route = location.hash;
  ui.busy = true;
  try {
    const html = await build();
    if (route !== location.hash) return;
    view.innerHTML = html;
    view.dataset.route = route || "#/overview";
    if ((parts()[0] || "overview") === "overview") afterOverview();
    const pre = view.querySelector("pre.logs");
    if (pre && ui.afterJob !== false) pre.scrollTop = pre.scrollHeight;
  } catch (e) {
    if (!(e instanceof Unauthorized)) view.innerHTML = `<p class="err" id="error">${esc(e.message)}</p>`;
  } finally {
    ui.busy = false;
  }
  for (const a of document.querySelectorAll("#nav a"))
    a.classList.toggle("active", (location.hash || "#/overview").startsWith(a.getAttribute("href")));
}
// On a live event: re-fetch the current page, unless the last fetch is still out, or a log
// file is open (those do not change often and can be long).
function refresh() {
  const [page, , file] = parts();
  if (ui.busy || (page === "logs" && file)) return;
  render();
}
window.addEventListener("hashchange", () => { ui.afterJob = true; render(); });
connect();
render();
