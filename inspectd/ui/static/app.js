// Entry point: one event stream for the whole line, hash routes for the two views.
import { h } from "./dom.js";
import { renderLine } from "./line.js";
import { renderStation } from "./station.js";

const stations = new Map(); // base -> tile summary
let me = { name: "?", operator: false };
let current = null; // base shown in the station view, or null
let pending = null; // throttles the station view's refetches
// A finger on the page holds the station view still for a moment: a strip that shifts as new
// rejects arrive must not move another part under the review button being tapped.
let holdUntil = 0;
const HOLD_MS = 4000;

const $ = (id) => document.getElementById(id);

function route() {
  const m = location.hash.match(/^#\/station\/(.+)$/);
  current = m ? decodeURIComponent(m[1]) : null;
  // #/wall: the line view for a screen on the line, read from three metres (style.css .wall)
  const wall = location.hash === "#/wall";
  document.body.classList.toggle("wall", wall);
  $("line-view").hidden = current !== null;
  $("station-view").hidden = current === null;
  $("crumb").textContent = current ? `› ${stations.get(current)?.name || current}` : wall ? "› wall" : "› line";
  if (current) refreshStation(); else renderLine($("tiles"), stations);
}

async function refreshStation() {
  if (!current) return;
  const base = current;
  const r = await fetch(`/api/station?base=${encodeURIComponent(base)}`);
  if (base !== current) return;
  if (!r.ok) { $("station-view").replaceChildren(h("p.empty", {}, `no such station: ${base}`)); return; }
  renderStation($("station-view"), await r.json(), me, refreshStation);
}

// New verdicts and state changes, read out by screen readers (the live region in index.html).
function announce(before, s) {
  const last = s.last;
  let text = null;
  if (before && before.state !== s.state) text = `${s.name} ${s.state}`;
  else if (last && (!before || !before.last || before.last.seq !== last.seq)) text = `${s.name}: ${last.verdict} #${last.seq} ${last.part_id}`;
  if (text) $("announce").textContent = text;
}

function stationChanged(s) {
  announce(stations.get(s.base), s);
  stations.set(s.base, s);
  $("no-stations").hidden = stations.size > 0;
  if (current === null) renderLine($("tiles"), stations);
  else if (s.base === current && !pending) scheduleRefresh(300);
}

function scheduleRefresh(ms) {
  pending = setTimeout(() => {
    pending = null;
    const wait = holdUntil - Date.now();
    if (wait > 0) scheduleRefresh(wait); else refreshStation();
  }, ms);
}

function showBroker(b) {
  const el = $("broker");
  el.textContent = b.connected ? "broker connected" : `broker: ${b.error || "disconnected"}`;
  el.className = `pill ${b.connected ? "ok" : "bad"}`;
  el.dataset.state = b.connected ? "connected" : "broker-down";
}

// The page's own server went (restarted, or the network to it): nothing on the page is live,
// and what its server knows of the broker is unknown, so the pill says so, not "broker".
function showServerLost() {
  const el = $("broker");
  el.textContent = "page server unreachable: reconnecting (nothing here is live)";
  el.className = "pill bad";
  el.dataset.state = "server-down";
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("line", (e) => {
    const snap = JSON.parse(e.data);
    stations.clear();
    snap.stations.forEach((s) => stations.set(s.base, s));
    $("no-stations").hidden = stations.size > 0;
    showBroker(snap.broker);
    route();
  });
  events.addEventListener("station", (e) => stationChanged(JSON.parse(e.data)));
  events.addEventListener("broker", (e) => showBroker(JSON.parse(e.data)));
  // the page's own link to its server: lost means nothing here is live
  events.onerror = showServerLost;
}

async function start() {
  const r = await fetch("/api/me");
  if (r.ok) me = await r.json();
  $("me").textContent = `${me.name}${me.operator ? " (operator)" : " (viewer)"}`;
  window.addEventListener("hashchange", route);
  $("station-view").addEventListener("pointerdown", () => { holdUntil = Date.now() + HOLD_MS; });
  connect();
  // rates and "last hour" counts age even when nothing arrives
  setInterval(() => { if (current === null) fetch("/api/line").then((x) => x.json()).then((snap) => {
    snap.stations.forEach((s) => stations.set(s.base, s)); if (current === null) renderLine($("tiles"), stations);
  }); }, 30000);
}

start();
