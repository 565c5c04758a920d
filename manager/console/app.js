// tm console: the whole view from /api/updates (server-sent events), then
// one update per change on the bus; nothing is polled. Tables are keyed
// by what the bus keys them by, so an update touches one row.
"use strict";

const tm = {
  view: null,          // the whole view, as the server keeps it
  cy: null,            // the map
  selected: null,      // "monitor_address/link_id" of the open link page
  history: new Map(),  // link key -> [[t, bps, pps, util], ...]
  applyTimes: [],      // {kind, ms}: from an update's arrival to the next frame
  chart: null,
};
window.tm = tm;

const HEARTBEAT_MS = 5000;   // store::HEARTBEAT_EVERY
const HISTORY = 600;         // points kept per link

function $(sel) { return document.querySelector(sel); }
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ""));
  return e;
}
function num(n) { return n == null ? "" : Number(n).toLocaleString("en"); }
function rate(bps, digits = 2) {
  if (bps == null) return "";
  const u = [["G", 1e9], ["M", 1e6], ["k", 1e3]].find(([, f]) => bps >= f);
  return u ? (bps / u[1]).toFixed(digits) + " " + u[0] : bps.toFixed(0) + " ";
}
function showError(text) {
  const e = $("#error");
  e.textContent = text;
  e.dataset.at = Date.now();
}

// ---- the latest per-link figures: link-load reports first, flow-stats
// windows where no report covers the link.
function linkFigures() {
  const out = new Map();
  const reports = Object.values(tm.view.reports)
    .filter(r => r.kind === "link-load" || r.kind === "link-load-final")
    .sort((a, b) => a.at_unix_ms - b.at_unix_ms);
  for (const r of reports) {
    for (const l of r.body.links || []) {
      out.set(l.monitor_address + "/" + l.link_id, { ...l, source: r.app, at: r.at_unix_ms });
    }
  }
  return out;
}
function monitorByAddress() {
  const m = new Map();
  for (const r of Object.values(tm.view.monitors)) m.set(r.address, r);
  return m;
}
function isUp(rec) { return rec && Date.now() - rec.heartbeat_unix_ms < 3 * HEARTBEAT_MS; }
function windowsOfMonitor(monitorId) {
  return Object.values(tm.view.windows).filter(w => w.monitor === monitorId);
}

// ---- the map
function buildMap() {
  const topo = tm.view.topology;
  if (!topo || !topo.routers) return;
  const elements = [];
  for (const r of topo.routers) elements.push({ data: { id: r, label: r } });
  for (const l of topo.links) {
    const tap = l.taps[0];
    const key = tap ? tap.monitor_address + "/" + tap.link_id : null;
    elements.push({
      data: { id: l.from + ">" + l.to, source: l.from, target: l.to, key, width: 2 },
      classes: tap ? "tapped" : "untapped",
    });
  }
  if (tm.cy) tm.cy.destroy();
  tm.cy = cytoscape({
    container: $("#map"),
    elements,
    layout: topo.routers.length <= 12 ? { name: "circle", padding: 40 } : { name: "cose", animate: false, randomize: false },
    wheelSensitivity: 0.3,
    style: [
      { selector: "node", style: { label: "data(label)", "background-color": "#2f5d8a", color: "#1d2329", "font-size": 11, "text-valign": "top", "text-margin-y": -4, width: 18, height: 18 } },
      { selector: "edge", style: { "curve-style": "bezier", "control-point-step-size": 28, "target-arrow-shape": "triangle", "arrow-scale": 0.9, width: "data(width)", "line-color": "#4f9d69", "target-arrow-color": "#4f9d69" } },
      { selector: "edge.untapped", style: { "line-color": "#c4cad1", "target-arrow-color": "#c4cad1", "line-style": "dotted", width: 1.5 } },
      { selector: "edge.mid", style: { "line-color": "#e0a526", "target-arrow-color": "#e0a526" } },
      { selector: "edge.high", style: { "line-color": "#d64545", "target-arrow-color": "#d64545" } },
      { selector: "edge.down", style: { "line-color": "#b3261e", "target-arrow-color": "#b3261e", "line-style": "dashed" } },
      { selector: "edge.path", style: { "line-color": "#7a3cc6", "target-arrow-color": "#7a3cc6", width: 6 } },
      { selector: "edge:selected", style: { "overlay-opacity": 0.15 } },
    ],
  });
  tm.cy.on("tap", "edge.tapped", ev => openLink(ev.target.data("key")));
}

function paintMap() {
  if (!tm.cy) return;
  const figs = linkFigures();
  const monitors = monitorByAddress();
  tm.cy.batch(() => {
    tm.cy.edges(".tapped").forEach(e => {
      const key = e.data("key");
      const f = figs.get(key);
      const address = key.split("/")[0];
      const u = f ? f.utilisation || 0 : 0;
      const level = u > 0.7 ? "high" : u > 0.3 ? "mid" : "";
      const down = !isUp(monitors.get(address)) || (f && f.capture_state === "failed");
      const width = Math.round(2 + Math.min(10, u * 10));
      // Only what changed: cytoscape restyles every edge it is told of.
      const look = level + (down ? " down" : "") + " " + width;
      if (e.scratch("look") === look) return;
      e.scratch("look", look);
      e.removeClass("mid high down");
      if (level) e.addClass(level);
      if (down) e.addClass("down");
      e.data("width", width);
    });
  });
}

function paintPath() {
  if (!tm.cy) return;
  const traces = Object.values(tm.view.reports).filter(r => r.kind === "attack-path")
    .sort((a, b) => a.at_unix_ms - b.at_unix_ms);
  tm.cy.edges().removeClass("path");
  const last = traces[traces.length - 1];
  for (const hop of (last && last.body.path) || []) {
    tm.cy.getElementById(hop.from_router + ">" + hop.to_router).addClass("path");
  }
}

// ---- tables
// The links table: one row per tap, made when the topology changes, its
// cells rewritten only where a figure changed.
function renderLinks() {
  const body = $("#links tbody");
  const figs = linkFigures();
  const monitors = monitorByAddress();
  const links = (tm.view.topology && tm.view.topology.links) || [];
  if (tm.linkRowsOf !== tm.view.topology) {
    tm.linkRowsOf = tm.view.topology;
    tm.linkRows = new Map();
    const rows = [];
    for (const l of links) {
      for (const t of l.taps) {
        const key = t.monitor_address + "/" + t.link_id;
        const cells = [l.from + " → " + l.to, key, "", "", "", "", "", ""].map((v, i) => el("td", { class: i >= 2 && i !== 6 ? "num" : "" }, v));
        const row = el("tr", { "data-link": key, onclick: () => openLink(key) }, ...cells);
        tm.linkRows.set(key, { row, cells, address: t.monitor_address, shown: [] });
        rows.push(row);
      }
    }
    body.replaceChildren(...rows);
  }
  for (const [key, r] of tm.linkRows) {
    const f = figs.get(key) || {};
    const up = isUp(monitors.get(r.address));
    const values = [num(f.packets), num(f.bytes), rate(f.bps),
      f.utilisation == null ? "" : (f.utilisation * 100).toFixed(3) + " %",
      !up ? "monitor down" : (f.capture_state || ""), num(f.capture_drops)];
    values.forEach((v, i) => {
      if (r.shown[i] !== v) { r.cells[i + 2].textContent = v; r.shown[i] = v; }
    });
    const cls = !up ? "down" : (f.capture_state === "failed" ? "failed" : "");
    if (r.row.className !== cls) r.row.className = cls;
    const bytes = String(f.bytes ?? "");
    if (r.row.dataset.bytes !== bytes) { r.row.dataset.bytes = bytes; r.row.dataset.packets = String(f.packets ?? ""); }
  }
}

function renderMonitors() {
  const rows = Object.values(tm.view.monitors).sort((a, b) => a.monitor.localeCompare(b.monitor)).map(m => {
    const drops = windowsOfMonitor(m.monitor).flatMap(w => w.capture || [])
      .reduce((s, c) => Math.max(s, (c.kernel_drops || 0) + (c.interface_drops || 0)), 0);
    const up = isUp(m);
    return el("tr", { "data-monitor": m.monitor, class: up ? "" : "down" },
      el("td", {}, m.monitor), el("td", {}, m.address), el("td", {}, up ? "up" : "down"),
      el("td", {}, (m.links || []).map(l => l.id + ": " + l.from_router + "→" + l.to_router).join(", ")),
      el("td", { class: "num" }, num(drops)));
  });
  $("#monitors tbody").replaceChildren(...rows);
}

function renderDeployments() {
  const rows = Object.values(tm.view.deployments).sort((a, b) => a.deployment.localeCompare(b.deployment)).map(d => {
    return el("tr", { "data-deployment": d.deployment },
      el("td", {}, d.deployment), el("td", {}, d.analyzer.name), el("td", {}, d.owner),
      el("td", {}, d.desired), el("td", {}, d.targets.map(t => t.monitor).join(", ")),
      el("td", {}, `rev ${d.revision} ${JSON.stringify(d.params)}`),
      el("td", {}, el("button", { type: "button", "data-unload": d.deployment, onclick: () => act("/api/unload", { deployment: d.deployment }) }, "unload")));
  });
  $("#deployments tbody").replaceChildren(...rows);
}

function renderApps() {
  const rows = [];
  for (const m of Object.values(tm.view.managers).sort((a, b) => a.manager.localeCompare(b.manager))) {
    const up = isUp(m);
    for (const app of m.apps) {
      rows.push(el("tr", { "data-app": m.manager + "/" + app },
        el("td", {}, m.manager), el("td", {}, app), el("td", {}, up ? "up" : "down"),
        el("td", {}, el("button", { type: "button", onclick: () => act("/api/apps/unload", { manager: m.manager, app }) }, "unload"))));
    }
    if (!m.apps.length) rows.push(el("tr", {}, el("td", {}, m.manager), el("td", {}, "—"), el("td", {}, up ? "up" : "down"), el("td")));
  }
  $("#apps tbody").replaceChildren(...rows);
}

function windowRow(key, w) {
  return el("tr", { "data-window": key, "data-seq": w.seq },
    el("td", {}, key), el("td", {}, w.analyzer + " " + (w.sha256 || "").slice(0, 8)),
    el("td", { class: "num" }, num(w.seq)), el("td", { class: "num" }, num(w.stats && w.stats.packets_in)),
    el("td", { class: "num" }, num(w.stats && w.stats.dropped)),
    el("td", {}, new Date(w.end_unix_ms).toLocaleTimeString()));
}
function renderWindows() {
  const rows = Object.entries(tm.view.windows).sort(([a], [b]) => a.localeCompare(b)).map(([k, w]) => windowRow(k, w));
  $("#windows tbody").replaceChildren(...rows);
}
function updateWindow(key, w) {
  const old = document.querySelector(`#windows tr[data-window="${CSS.escape(key)}"]`);
  const row = windowRow(key, w);
  if (old) old.replaceWith(row); else renderWindows();
}

function eventItem(e) {
  const d = e.data || {};
  // An analyzer's alert: what it says about itself (dos-detect: kind,
  // target, count over threshold, link).
  const detail = e.kind === "alert" && d.kind
    ? ` ${d.kind} on ${d.target ?? "?"}: ${d.count ?? "?"} over ${d.threshold ?? "?"} (link ${d.link ?? "?"})`
    : "";
  return el("li", { "data-kind": e.kind, "data-deployment": e.deployment, "data-alert": d.kind || "" },
    el("span", { class: "k" }, e.kind), `${e.monitor}/${e.deployment}: ${e.message}${detail}`);
}
function renderEvents() {
  $("#events").replaceChildren(...tm.view.events.slice().reverse().map(eventItem));
}

// ---- a link's page
function openLink(key) {
  tm.selected = key;
  $("#link-page").hidden = false;
  renderLinkPage();
}
$("#link-close").addEventListener("click", () => { tm.selected = null; $("#link-page").hidden = true; });

function renderLinkPage() {
  const key = tm.selected;
  if (!key) return;
  const [address, linkId] = key.split("/");
  const f = linkFigures().get(key) || {};
  $("#link-title").textContent = `${f.from_router || ""} → ${f.to_router || ""} (tap ${key})` +
    (f.utilisation == null ? "" : `: ${(f.utilisation * 100).toFixed(2)} % of ${rate(f.bps / f.utilisation)}b/s`);
  const h = tm.history.get(key) || [];
  const data = [h.map(p => p[0]), h.map(p => p[1]), h.map(p => p[2])];
  if (!tm.chart || tm.chart.key !== key) {
    if (tm.chart) tm.chart.destroy();
    tm.chart = new uPlot({
      width: Math.max(320, $("#link-page").clientWidth - 20), height: 220,
      series: [{}, { label: "bit/s", stroke: "#2f5d8a", width: 2, scale: "b", value: (u, v) => v == null ? "" : rate(v) + "b/s" },
               { label: "packets/s", stroke: "#4f9d69", width: 2, scale: "p", value: (u, v) => v == null ? "" : v.toFixed(1) }],
      axes: [{}, { scale: "b", size: 80, values: (u, vals) => vals.map(v => rate(v, 0) + "b/s") },
             { scale: "p", side: 1, size: 60, grid: { show: false } }],
    }, data, $("#chart"));
    tm.chart.key = key;
  } else {
    tm.chart.setData(data);
  }
  // Flows and capture from the flow-stats windows of the tap's monitor.
  const rec = monitorByAddress().get(address);
  const wins = rec ? windowsOfMonitor(rec.monitor).filter(w => w.results && w.results.top) : [];
  const w = wins.sort((a, b) => b.end_unix_ms - a.end_unix_ms)[0];
  const top = (w && w.results.top) || [];
  $("#link-flows tbody").replaceChildren(...top.slice(0, 10).map(t =>
    el("tr", {}, el("td", {}, `${t.src}:${t.sport}`), el("td", {}, `${t.dst}:${t.dport}`), el("td", {}, t.proto),
      el("td", { class: "num" }, num(t.packets)), el("td", { class: "num" }, num(t.bytes)))));
  const byProto = new Map();
  for (const t of top) byProto.set(t.proto, (byProto.get(t.proto) || 0) + t.bytes);
  const total = [...byProto.values()].reduce((a, b) => a + b, 0) || 1;
  const names = { 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6" };
  $("#link-protos tbody").replaceChildren(...[...byProto.entries()].sort((a, b) => b[1] - a[1]).map(([p, b]) =>
    el("tr", {}, el("td", {}, names[p] || p), el("td", { class: "num" }, num(b)), el("td", { class: "num" }, (100 * b / total).toFixed(1) + " %"))));
  const cap = w && (w.capture || []).find(c => String(c.link) === linkId);
  $("#link-capture").textContent = cap
    ? `captured ${num(cap.packets)} packets, ${num(cap.bytes)} bytes; kernel drops ${num(cap.kernel_drops)}, interface drops ${num(cap.interface_drops)}; queue drops ${num(w.stats.dropped)}`
    : "no result window of this tap's monitor yet (deploy flow-stats with report_every_ms to see its flows here)";
}

function recordHistory(report) {
  if (report.kind !== "link-load") return;
  const t = report.at_unix_ms / 1000;
  for (const l of report.body.links || []) {
    const key = l.monitor_address + "/" + l.link_id;
    const h = tm.history.get(key) || [];
    h.push([t, l.bps || 0, l.pps || 0, l.utilisation || 0]);
    if (h.length > HISTORY) h.shift();
    tm.history.set(key, h);
  }
}

// ---- applying what the server pushes
function renderAll() {
  buildMap(); paintMap(); paintPath();
  renderLinks(); renderMonitors(); renderDeployments(); renderApps(); renderWindows(); renderEvents();
  renderLinkPage();
}

// What changed since the last frame is drawn once, in the next frame:
// a burst of updates costs one render of each part, not one per update.
const renders = {
  map: () => { paintMap(); paintPath(); }, links: renderLinks, monitors: renderMonitors,
  deployments: renderDeployments, apps: renderApps, linkpage: () => { if (tm.selected) renderLinkPage(); },
};
tm.dirty = new Set();
function schedule(...parts) {
  if (!tm.dirty.size) requestAnimationFrame(() => {
    const parts = [...tm.dirty];
    tm.dirty.clear();
    for (const p of parts) renders[p]();
  });
  for (const p of parts) tm.dirty.add(p);
}

function apply(u) {
  const v = tm.view;
  const set = (map, key, value) => { if (value == null) delete map[key]; else map[key] = value; };
  switch (u.kind) {
    case "topology": v.topology = u.value; buildMap(); schedule("map", "links"); break;
    case "monitor": set(v.monitors, u.key, u.value); schedule("monitors", "map", "links"); break;
    case "deployment": set(v.deployments, u.key, u.value); schedule("deployments"); break;
    case "manager": set(v.managers, u.key, u.value); schedule("apps"); break;
    case "window":
      // A final window (the deployment's unload) ends its row.
      if (u.value.last) { delete v.windows[u.key]; renderWindows(); break; }
      v.windows[u.key] = u.value; updateWindow(u.key, u.value);
      schedule("linkpage");
      break;
    case "report":
      v.reports[u.key] = u.value; recordHistory(u.value);
      schedule("map", "links", "linkpage");
      break;
    case "event":
      v.events.push(u.value); if (v.events.length > 200) v.events.shift();
      $("#events").prepend(eventItem(u.value));
      break;
  }
}

// How long an update takes to show: from its arrival to the end of the
// next frame's scripts, which drew it (performance.now()); the browser
// paints that frame right after.
function timed(kind, fn) {
  const t0 = performance.now();
  fn();
  requestAnimationFrame(() => {
    tm.applyTimes.push({ kind, ms: performance.now() - t0 });
    if (tm.applyTimes.length > 5000) tm.applyTimes.shift();
  });
}

function connect() {
  const source = new EventSource("/api/updates");
  source.addEventListener("view", ev => timed("view", () => {
    tm.view = JSON.parse(ev.data);
    for (const r of Object.values(tm.view.reports)) recordHistory(r);
    renderAll();
    $("#live").textContent = "live"; $("#live").className = "badge";
  }));
  source.addEventListener("update", ev => {
    if (!tm.view) return;
    const u = JSON.parse(ev.data);
    timed(u.kind, () => apply(u));
  });
  source.onerror = () => { $("#live").textContent = "reconnecting…"; $("#live").className = "badge off"; };
}

// ---- actions
async function act(path, body) {
  showError("");
  try {
    const r = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = answer.error || {};
      showError(`${path.replace("/api/", "")} refused: ${e.code || r.status}: ${e.message || ""}`);
      return null;
    }
    const failed = answer.failed || [];
    if (failed.length) showError(`${path.replace("/api/", "")}: ${failed.map(f => `${f.monitor}: ${f.code}: ${f.message}`).join("; ")}`);
    return answer;
  } catch (e) {
    showError(`${path}: ${e}`);
    return null;
  }
}
function jsonField(form, name) {
  const text = form.elements[name].value.trim();
  if (!text) return null;
  try { return JSON.parse(text); } catch (e) { throw new Error(`${name}: not JSON: ${e.message}`); }
}
function onSubmit(id, path, build) {
  $(id).addEventListener("submit", ev => {
    ev.preventDefault();
    try { act(path, build(ev.target)); } catch (e) { showError(e.message); }
  });
}
onSubmit("#deploy-form", "/api/deploy", f => ({
  deployment: f.elements.deployment.value.trim(), analyzer: f.elements.analyzer.value.trim(),
  params: jsonField(f, "params"),
  monitors: f.elements.monitors.value.split(",").map(s => s.trim()).filter(Boolean),
}));
onSubmit("#configure-form", "/api/configure", f => ({ deployment: f.elements.deployment.value.trim(), params: jsonField(f, "params") }));
onSubmit("#app-form", "/api/apps/load", f => ({
  manager: f.elements.manager.value.trim(), app: f.elements.app.value.trim(), blob: f.elements.blob.value.trim(), params: jsonField(f, "params"),
}));

fetch("/api/whoami").then(r => r.json()).then(w => {
  $("#who").textContent = w.read_only ? `${w.id} (read-only)` : `acting as ${w.id}`;
  if (w.read_only) { $("#who").className = "badge ro"; document.body.classList.add("read-only"); }
});
// Liveness is heartbeat age: repaint as records age without news.
// Liveness is heartbeat age: redraw when a monitor or manager crossed it.
setInterval(() => {
  if (!tm.view) return;
  const up = [...Object.values(tm.view.monitors), ...Object.values(tm.view.managers)].map(isUp).join();
  if (up !== tm.lastUp) { tm.lastUp = up; schedule("monitors", "map", "links", "apps"); }
}, 1000);
connect();
