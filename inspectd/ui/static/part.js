// The part view: one archived part, asked from its station (/api/part), large and zoomable,
// the frame or the frame with its heatmap, its regions, its score against the threshold, what
// judged it, and its review. A dialog of its own: the station view rebuilds under it as parts
// arrive, this does not move.
import { LATE_WHY, fmt, h, lateBadge, post } from "./dom.js";
import { LABEL_BUTTON, LABEL_TEXT, LABEL_WHY, labelsFor } from "./labels.js";

const ZOOMS = [1, 1.5, 2, 3, 4, 6, 8];
let dialog = null;
let state = null; // { base, me, data, frame, heat, mode, zoom, confirm, answer, onChange }

function ensureDialog() {
  if (dialog) return dialog;
  dialog = h("dialog.part-view", { dataset: { testid: "part-view" }, "aria-labelledby": "part-title" });
  dialog.addEventListener("close", () => { state = null; });
  document.body.append(dialog);
  return dialog;
}

function loadImage(type, data) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be decoded"));
    img.src = `data:${type};base64,${data}`;
  });
}

// The map coloured against the part's own threshold: below half of it nothing, up to it
// yellow to orange, at or above it red; so only what the station judged defective is red.
// Returns the layer and how many map pixels are at or above the threshold.
function heatLayer(mapImg, top, threshold) {
  const c = document.createElement("canvas");
  c.width = mapImg.naturalWidth; c.height = mapImg.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(mapImg, 0, 0);
  const px = g.getImageData(0, 0, c.width, c.height);
  let red = 0;
  for (let i = 0; i < px.data.length; i += 4) {
    const level = (px.data[i] / 255) * top / threshold; // in thresholds
    let rgba = [0, 0, 0, 0];
    if (level >= 1) { rgba = [220, 20, 20, 170]; red++; }
    else if (level >= 0.5) rgba = [255, Math.round(220 - 120 * (level - 0.5) * 2), 0, Math.round(40 + 120 * (level - 0.5) * 2)];
    px.data.set(rgba, i);
  }
  g.putImageData(px, 0, 0);
  return { canvas: c, red };
}

function draw(canvas) {
  const { frame, heat, data, mode } = state;
  const v = data.verdict;
  canvas.width = frame.naturalWidth; canvas.height = frame.naturalHeight;
  const g = canvas.getContext("2d");
  g.drawImage(frame, 0, 0);
  const geo = data.geometry;
  if (mode === "heatmap" && heat && geo) {
    g.imageSmoothingEnabled = true;
    g.drawImage(heat.canvas, geo.x0, geo.y0, heat.canvas.width * geo.sx, heat.canvas.height * geo.sy);
  }
  g.lineWidth = Math.max(2, frame.naturalWidth / 300);
  g.strokeStyle = v.verdict === "OK" ? "#2e8b57" : "#ff1744";
  (v.regions || []).forEach((r) => g.strokeRect(r.x, r.y, r.w, r.h));
  canvas.dataset.mode = mode;
  canvas.dataset.redPixels = mode === "heatmap" && heat ? String(heat.red) : "0";
  canvas.style.width = `${state.zoom * 100}%`;
}

function facts(d) {
  const v = d.verdict;
  const model = v.model || {};
  const rows = [
    ["verdict", `${v.verdict}${v.error ? ` — ${v.error}` : ""}${v.late ? ` — ${LATE_WHY}` : ""}`],
    ["score", `${fmt.score(v.score)} against threshold ${fmt.score(v.threshold)}`],
    ["part id", v.part_id],
    ["seq", v.seq],
    ["product", v.product || "–"],
    ["model", `${model.name || "–"} ${(model.sha256 || "").slice(0, 12)}`],
    ["captured", v.t_capture ? new Date(v.t_capture).toLocaleString() : "–"],
    ["latency", fmt.ms(v.latency_ms)],
    ["camera", `${(v.camera || {}).serial || "–"} frame ${(v.camera || {}).frame_id ?? "–"}`],
  ];
  return h("table.facts-table", { dataset: { testid: "part-facts" } }, rows.map(([k, val]) => h("tr", {}, h("th", {}, k), h("td", {}, String(val)))));
}

function scoreMeter(v) {
  const t = v.threshold;
  if (typeof t !== "number" || t <= 0 || typeof v.score !== "number") return null;
  const frac = Math.min(1, v.score / (2 * t));
  return h("div.scorebar", {
    role: "meter", "aria-label": "score against the threshold (the mark in the middle)",
    "aria-valuemin": "0", "aria-valuemax": String(2 * t), "aria-valuenow": String(Math.min(v.score, 2 * t)),
    "aria-valuetext": `score ${fmt.score(v.score)}, threshold ${fmt.score(t)}`,
  }, h(`div.fill.v-${v.verdict}`, { style: `width:${(frac * 100).toFixed(1)}%` }), h("div.mark"));
}

function regions(v) {
  const list = v.regions || [];
  if (!list.length) return h("p.muted", { dataset: { testid: "part-regions" } }, "no defect region");
  return h("table.regions", { dataset: { testid: "part-regions" } },
    h("caption", {}, `${list.length} region${list.length === 1 ? "" : "s"} (frame pixels)`),
    h("tr", {}, ["#", "x", "y", "width", "height", "area", "peak"].map((t) => h("th", { scope: "col" }, t))),
    list.map((r, i) => h("tr", {}, [i + 1, r.x, r.y, r.w, r.h, r.area, fmt.score(r.peak)].map((c) => h("td", {}, String(c))))));
}

function reviewBlock() {
  const { data, me } = state;
  const v = data.verdict;
  const done = data.review;
  if (done) {
    return h("div.reviewed", { dataset: { testid: "part-reviewed" } },
      h("span", {}, `reviewed: ${LABEL_TEXT[done.label] || done.label}${done.by ? ` by ${done.by}` : ""}${done.ts ? ` ${fmt.time(done.ts)}` : ""}`),
      me.operator ? h("button.small", { dataset: { testid: "part-undo" }, onclick: () => review(null) }, "Undo") : null);
  }
  if (!me.operator) return null;
  if (state.confirm) {
    const label = state.confirm;
    return h("div.confirm", { dataset: { testid: "part-confirm" } },
      h("p.q", {}, `Mark #${v.seq} ${v.part_id} as ${LABEL_TEXT[label]}?`), h("p.why", {}, LABEL_WHY[label]),
      h("div.buttons", {},
        h("button", { dataset: { testid: "part-confirm-yes" }, onclick: () => review(label) }, "Confirm"),
        h("button.secondary", { onclick: () => { state.confirm = null; render(); } }, "Cancel")));
  }
  return h("div.buttons", {}, labelsFor(v.verdict).map((label) =>
    h("button.review", { dataset: { testid: `part-review-${label}` }, onclick: () => { state.confirm = label; render(); } }, LABEL_BUTTON[label])));
}

async function review(label) {
  const { base, data } = state;
  const v = data.verdict;
  state.confirm = null;
  state.answer = { pending: true, text: "sent to the station, waiting for its answer…" };
  render();
  const a = await post("/api/review", { base, seq: v.seq, part_id: v.part_id, label });
  if (!state) return;
  state.answer = a.ok ? null : { ok: false, text: a.error || (a.refusal || {}).detail || "refused" };
  if (a.ok) {
    state.data.review = label ? { label, by: a.by, ts: a.ts } : null;
    if (state.onChange) state.onChange();
  }
  render();
}

function render() {
  if (!state) return;
  const { data } = state;
  const v = data.verdict;
  const canvas = h("canvas.part-image", { dataset: { testid: "part-image" }, role: "img", "aria-label": `part ${v.part_id}, ${v.verdict}, ${state.mode === "heatmap" ? "with its heatmap" : "the frame as grabbed"}` });
  const zoomTo = (z) => { state.zoom = z; render(); };
  const i = ZOOMS.indexOf(state.zoom);
  const mode = (m, text, testid) => h("button.secondary", {
    "aria-pressed": String(state.mode === m), dataset: { testid },
    disabled: m === "heatmap" && !state.heat, title: m === "heatmap" && !state.heat ? "no anomaly map archived for this part" : "",
    onclick: () => { state.mode = m; render(); },
  }, text);
  dialog.replaceChildren(
    h("div.part-head", {},
      h("h2", { id: "part-title" }, h(`span.verdict.v-${v.verdict}`, {}, v.verdict), ` #${v.seq} ${v.part_id} `, lateBadge(v)),
      h("button.secondary", { dataset: { testid: "part-close" }, onclick: () => dialog.close(), "aria-label": "close the part view" }, "Close")),
    h("div.part-body", {},
      h("div.part-stage", {},
        h("div.toolbar", {},
          mode("frame", "Frame", "part-mode-frame"), mode("heatmap", "Heatmap", "part-mode-heatmap"),
          h("button.secondary", { "aria-label": "zoom out", disabled: i <= 0, onclick: () => zoomTo(ZOOMS[i - 1]) }, "−"),
          h("span.zoom", { dataset: { testid: "part-zoom" } }, `${state.zoom * 100} %`),
          h("button.secondary", { "aria-label": "zoom in", dataset: { testid: "part-zoom-in" }, disabled: i >= ZOOMS.length - 1, onclick: () => zoomTo(ZOOMS[i + 1]) }, "+"),
          h("button.secondary", { onclick: () => zoomTo(1), disabled: state.zoom === 1 }, "Fit")),
        h("div.viewport", { dataset: { testid: "part-viewport" }, ondblclick: () => i < ZOOMS.length - 1 && zoomTo(ZOOMS[i + 1]) }, canvas),
        state.mode === "heatmap"
          ? h("p.legend", {}, `red: at or above the threshold ${fmt.score(v.threshold)}; yellow to orange: half of it and above; nothing below`)
          : null),
      h("div.part-side", {},
        scoreMeter(v), facts(data), regions(v),
        h("div", { role: "status", "aria-live": "polite" }, state.answer ? h(`div.answer.${state.answer.pending ? "pending" : "bad"}`, {}, state.answer.text) : null),
        reviewBlock())));
  draw(canvas);
}

// Open the part view on the part with this seq and/or part id ({seq, part_id}); a search by a
// number that finds no seq tries it as a part id. Resolves to null, or the refusal's text.
export async function openPart(base, query, me, onChange) {
  const ask = async (q) => {
    const params = new URLSearchParams({ base });
    if (q.seq) params.set("seq", q.seq);
    if (q.part_id) params.set("part_id", q.part_id);
    const r = await fetch(`/api/part?${params}`);
    try { return await r.json(); } catch { return { ok: false, error: `HTTP ${r.status}` }; }
  };
  let a = await ask(query);
  if (!a.ok && query.text && /^\d+$/.test(query.text)) a = await ask({ part_id: query.text });
  if (!a.ok) return a.error || (a.refusal || {}).detail || "no answer";
  const data = a.result;
  if (!data.frame) return `#${data.verdict.seq} ${data.verdict.part_id} has no archived frame (${data.verdict.error || "none was grabbed"})`;
  const frame = await loadImage(data.frame.type, data.frame.data);
  let heat = null;
  if (data.map) heat = heatLayer(await loadImage(data.map.type, data.map.data), data.map.top, data.verdict.threshold);
  ensureDialog();
  state = { base, me, data, frame, heat, mode: heat ? "heatmap" : "frame", zoom: 1, confirm: null, answer: null, onChange };
  render();
  if (!dialog.open) dialog.showModal();
  return null;
}
