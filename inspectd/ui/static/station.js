// The station view: the live part, recent rejects to review, the score picture, calibration,
// and the operator's actions with the station's answers.
//
// The view is rebuilt whenever the station sends something, so what the operator is doing
// lives here, per station, not in the elements: the answer being waited for or last shown,
// an open confirmation, the product picked. A rebuild shows them again as they were.
import { LATE_WHY, answerText, fmt, h, lateBadge, overlayUrl, post, rerender } from "./dom.js";
import { countsPanel } from "./counts.js";
import { drawHistogram, histogramText } from "./histogram.js";
import { LABEL_BUTTON, LABEL_TEXT, LABEL_WHY, labelsFor } from "./labels.js";
import { openPart } from "./part.js";
import { teachPanel } from "./teach.js";

const views = new Map(); // base -> { answer, confirm, product }
function view(base) {
  if (!views.has(base)) views.set(base, { answer: null, confirm: null, product: null, find: "", found: null });
  return views.get(base);
}

let redraw = () => {}; // the current view, rebuilt from its last data (set by renderStation)
let refetch = () => {}; // the current view, from fresh data

// What a station that is not online cannot do, and why; null when it can.
function offlineReason(d) {
  if (d.state === "online") return null;
  if (d.state === "unknown") return `${d.name} has sent no status yet: it cannot answer`;
  return `${d.name} is ${d.state}: it cannot answer until it is running again`;
}

async function act(d, command, path, body) {
  const v = view(d.base);
  v.answer = { pending: true, command, text: `${command}: sent to ${d.name}, waiting for its answer…` };
  redraw();
  const a = await post(path, body);
  v.answer = { pending: false, ok: !!a.ok, command, text: answerText({ command, ...a }) };
  redraw();
  refetch(); // the operator's own action shows at once, whatever holds the view still
}

function answerBox(d) {
  const a = view(d.base).answer;
  if (!a) return null;
  return h(`div.answer.${a.pending ? "pending" : a.ok ? "ok" : "bad"}`, { dataset: { testid: "answer" } }, a.text);
}

// -- reviews ----------------------------------------------------------------------------------

function confirmBox(d, question, why, yes, onYes, key) {
  const v = view(d.base);
  return h("div.confirm", { dataset: { testid: "confirm" }, role: "group", "aria-label": question },
    h("p.q", {}, question), why ? h("p.why", {}, why) : null,
    h("div.buttons", {},
      h("button", { dataset: { testid: "confirm-yes", focus: `${key}:yes` }, onclick: () => { v.confirm = null; onYes(); } }, yes),
      h("button.secondary", { dataset: { testid: "confirm-no", focus: `${key}:no` }, onclick: () => { v.confirm = null; redraw(); } }, "Cancel"),
    ));
}

// The review state of one part, and its buttons: label (after a confirmation) or undo.
function review(d, part, labels, me) {
  const v = view(d.base);
  const done = part.reviewed;
  const blocked = offlineReason(d);
  if (done) {
    return h("div.reviewed", { dataset: { testid: "reviewed" } },
      h("span", {}, `reviewed: ${LABEL_TEXT[done.label] || done.label}${done.by ? ` by ${done.by}` : ""}${done.ts ? ` ${fmt.time(done.ts)}` : ""}`),
      me.operator ? h("button.small", {
        dataset: { testid: "undo", focus: `undo:${part.seq}` },
        disabled: !!blocked, title: blocked || "take the review back",
        onclick: () => act(d, "unreview", "/api/review", { base: d.base, seq: part.seq, part_id: part.part_id, label: null }),
      }, "Undo") : null);
  }
  if (!me.operator) return null;
  const c = v.confirm;
  if (c && c.kind === "review" && c.seq === part.seq) {
    return confirmBox(d, `Mark #${part.seq} ${part.part_id} as ${LABEL_TEXT[c.label]}?`, LABEL_WHY[c.label], "Confirm",
      () => act(d, "review", "/api/review", { base: d.base, seq: part.seq, part_id: part.part_id, label: c.label }),
      `review:${part.seq}`);
  }
  return h("div.review-buttons", {}, labels.map((label) => h("button.review", {
    dataset: { testid: `review-${label}`, focus: `review:${part.seq}:${label}` },
    disabled: !!blocked, title: blocked || "",
    onclick: () => { v.confirm = { kind: "review", seq: part.seq, part_id: part.part_id, label }; redraw(); },
  }, LABEL_BUTTON[label])));
}

// -- panels -----------------------------------------------------------------------------------

function livePart(d, me) {
  const last = d.last;
  const ov = d.live_overlay;
  let img;
  if (ov) {
    img = h("figure.live", {},
      h("img", { src: overlayUrl(d.base, ov.seq), alt: `overlay of part ${ov.part_id || "?"} (${ov.verdict || "?"})`, dataset: { testid: "live-overlay", seq: ov.seq } }),
      h("figcaption", {}, ov.seq ? `overlay of #${ov.seq} ${ov.part_id || ""} (${ov.verdict || "?"})` : "the newest overlay (MQTT 3.1.1 does not say which part)"));
  } else {
    img = h("div.live.none", { dataset: { testid: "no-live-overlay" } }, last
      ? `no overlay of #${last.seq}: the station sends NG overlays only (mqtt.overlays: all sends every part's)`
      : "no overlay received yet");
  }
  if (!last) return h("div.panel", { dataset: { testid: "live" } }, img, h("p", {}, "no part yet"));
  const t = last.threshold;
  const hasScore = typeof t === "number" && t > 0 && typeof last.score === "number";
  const frac = hasScore ? Math.min(1, last.score / (2 * t)) : null;
  return h("div.panel", { dataset: { testid: "live" } },
    img,
    h("div.live-verdict", {},
      h(`span.verdict.v-${last.verdict}`, { dataset: { testid: "station-verdict" } }, last.verdict),
      h("span.part", { dataset: { testid: "station-part" } }, `#${last.seq} ${last.part_id}`),
      lateBadge(last),
    ),
    last.late ? h("div.why", { dataset: { testid: "late-why" } }, LATE_WHY) : null,
    h("div.scorebar", hasScore ? {
      role: "meter", "aria-label": "score against the threshold (the mark in the middle)",
      "aria-valuemin": "0", "aria-valuemax": String(2 * t), "aria-valuenow": String(Math.min(last.score, 2 * t)),
      "aria-valuetext": `score ${fmt.score(last.score)}, threshold ${fmt.score(t)}`,
    } : {},
      frac === null ? null : h(`div.fill.v-${last.verdict}`, { style: `width:${(frac * 100).toFixed(1)}%` }),
      h("div.mark")),
    h("div.score", {}, `score ${fmt.score(last.score)}  threshold ${fmt.score(t)}  latency ${fmt.ms(last.latency_ms)}`),
    last.error ? h("div.reason", {}, last.error) : null,
    review(d, { ...last, reviewed: d.last_reviewed }, labelsFor(last.verdict), me),
    pendingElsewhere(d, me),
  );
}

// A confirmation asked on a live part that newer parts have since replaced (and that is not in
// the strip): still answerable here, so the part the operator meant is the part labelled.
function pendingElsewhere(d, me) {
  const c = view(d.base).confirm;
  if (!me.operator || !c || c.kind !== "review" || c.seq === (d.last || {}).seq) return null;
  if (d.rejects.some((r) => r.seq === c.seq)) return null;
  return h("div", { dataset: { testid: "pending-review" } },
    h("p.muted", {}, `#${c.seq} ${c.part_id} is no longer the live part:`),
    review(d, { seq: c.seq, part_id: c.part_id, reviewed: null }, [c.label], me));
}

// Open a part in the part view; a refusal (not archived, station gone) shows under the finder.
async function open(d, me, query) {
  const v = view(d.base);
  v.found = { pending: true, text: `asking ${d.name} for the part…` };
  redraw();
  const refused = await openPart(d.base, query, me, refetch);
  v.found = refused ? { pending: false, text: refused } : null;
  redraw();
}

function finder(d, me) {
  const v = view(d.base);
  const input = h("input", {
    type: "search", value: v.find, placeholder: "seq or part id", "aria-label": "find a part by seq or part id",
    dataset: { testid: "find-input", focus: "find-input" },
    oninput: (e) => { v.find = e.target.value; },
  });
  const go = (e) => {
    e.preventDefault();
    const text = v.find.trim();
    if (!text) return;
    open(d, me, /^\d+$/.test(text) ? { seq: text, text } : { part_id: text });
  };
  return h("form.finder", { onsubmit: go, role: "search" },
    input, h("button", { type: "submit", dataset: { testid: "find", focus: "find" } }, "Find"),
    v.found ? h(`span.${v.found.pending ? "muted" : "find-error"}`, { dataset: { testid: "find-result" } }, v.found.text) : null);
}

function rejectStrip(d, me) {
  if (!d.rejects.length) return h("p.muted", {}, "no NG or ERROR part since the page's server started");
  return h("div.strip", { dataset: { testid: "rejects" } }, d.rejects.map((r) =>
    h(`div.reject.v-${r.verdict}`, { dataset: { testid: "reject", seq: r.seq } },
      h("button.open", {
        dataset: { testid: "open", focus: `open:${r.seq}` }, "aria-label": `open #${r.seq} ${r.part_id}: frame, heatmap, regions`,
        onclick: () => open(d, me, { seq: r.seq, part_id: r.part_id }),
      }, r.overlay ? h("img", { src: overlayUrl(d.base, r.seq), alt: "" }) : h("div.thumb.none", {}, "no overlay")),
      h("div.rhead", {}, h(`b.v-${r.verdict}`, {}, r.verdict), ` #${r.seq} ${r.part_id} `, lateBadge(r)),
      h(`div.${r.error ? "reason" : "why"}`, {}, r.error || `score ${fmt.score(r.score)} ≥ ${fmt.score(r.threshold)}, ${(r.regions || []).length} region(s)`),
      h("div.when", {}, fmt.time(r.t_verdict)),
      review(d, r, labelsFor(r.verdict), me),
    )));
}

function calibration(d) {
  const c = d.calibration || {};
  const drift = d.drift || {};
  const rows = [
    ["image threshold", fmt.score(d.thresholds.image)],
    ["pixel threshold", fmt.score(d.thresholds.pixel)],
    ["method", c.method || "–"],
    ["good parts (n)", c.n_good ?? "–"],
    ["target false-reject rate", c.target_frr ?? "none stated"],
    ["false-reject bound", c.frr_bound != null ? `${c.frr_bound} at ${c.confidence}` : "–"],
    ["calibrated", c.created || "–"],
    ["drift", drift.state ? `${drift.state}${drift.window ? ` (${drift.window} OK parts)` : ""}` : "–"],
  ];
  return h("table.facts-table", { dataset: { testid: "calibration" } }, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, String(v)))));
}

function productPicker(d) {
  const v = view(d.base);
  const blocked = offlineReason(d);
  if (d.products === null || d.products === undefined) return h("span.muted", {}, "asking the station for its products…");
  const chosen = v.product && (!d.products.length || d.products.includes(v.product)) ? v.product : d.product;
  // a station too old to list its products (it refused `products`): its name typed, still confirmed
  const select = d.products.length ? h("select", {
    "aria-label": "product to switch to", dataset: { testid: "product-choice", focus: "product-choice" },
    disabled: !!blocked,
    onchange: (e) => { v.product = e.target.value; },
  }, d.products.map((p) => h("option", { value: p, selected: p === chosen }, p === d.product ? `${p} (running)` : p)))
    : h("input", {
      type: "text", value: chosen || "", "aria-label": "product to switch to (the station does not list its products)",
      dataset: { testid: "product-name", focus: "product-name" }, disabled: !!blocked,
      oninput: (e) => { v.product = e.target.value; },
    });
  return h("span.switch", {}, select,
    h("button", {
      dataset: { testid: "switch", focus: "switch" }, disabled: !!blocked, title: blocked || "",
      onclick: () => {
        const product = select.value.trim();
        if (!product) return;
        if (product === d.product) { v.answer = { ok: false, text: `${d.name} already runs ${product}` }; redraw(); return; }
        v.confirm = { kind: "product", product }; redraw();
      },
    }, "Switch product"));
}

function actions(d, me) {
  const v = view(d.base);
  const recent = d.answers.filter((a) => a.command !== "reviews").slice(0, 5);
  const history = h("ul.history", { dataset: { testid: "answers" } }, recent.map((a) =>
    h(`li.${a.ok ? "ok" : "bad"}`, {}, `${fmt.time(a.ts)} ${a.by || ""}: ${answerText(a)}`)));
  if (!me.operator) return h("div.panel", {}, h("h2", {}, "Actions"), h("p.muted", {}, "viewers see; operators review and act"), history);
  const blocked = offlineReason(d);
  const c = v.confirm;
  return h("div.panel", {},
    h("h2", {}, "Actions"),
    blocked ? h("p.blocked", { dataset: { testid: "actions-blocked" } }, blocked) : null,
    h("div.buttons", {},
      h("button", {
        dataset: { testid: "reload", focus: "reload" }, disabled: !!blocked, title: blocked || "",
        onclick: () => act(d, "reload_thresholds", "/api/command", { base: d.base, command: "reload_thresholds", args: {} }),
      }, "Reload thresholds"),
      productPicker(d),
    ),
    c && c.kind === "product"
      ? confirmBox(d, `Switch ${d.name} from ${d.product || "?"} to ${c.product}?`,
        `The next part is judged by ${c.product}'s model and thresholds.`, "Confirm switch",
        () => act(d, "product", "/api/command", { base: d.base, command: "product", args: { product: c.product } }),
        "product")
      : null,
    h("div", { role: "status", "aria-live": "polite" }, answerBox(d)),
    history,
  );
}

export function renderStation(root, d, me, refresh) {
  redraw = () => renderStation(root, d, me, refresh);
  refetch = refresh;
  const rv = d.reviews_today;
  rerender(root, [
    h(`div.station-head.state-${d.state}${d.health === "degraded" || d.silent ? ".degraded" : ""}`, {},
      h("h1", {}, d.name),
      h("span.state", { dataset: { testid: "station-state" } }, d.silent && d.state === "online" ? "not responding" : d.state),
      h("span.sub", {}, `${d.product || "–"} · ${d.model || ""} ${d.model_sha256 || ""} · ${d.engine || ""}`),
      h("span.reviews", { dataset: { testid: "reviews-today" } },
        rv ? `${rv.false_reject} false reject${rv.false_reject === 1 ? "" : "s"} reviewed today · ${rv.true_defect ?? 0} real · ${rv.missed_defect} missed` : "reviews today: –"),
    ),
    d.problems.length ? h("ul.problems.big", {}, d.problems.map((p) => h("li", {}, p))) : null,
    h("div.grid", {},
      livePart(d, me),
      h("div.panel", {},
        h("h2", {}, "Scores (green OK, red NG) against the threshold and calibration's good-score quantiles"),
        h("canvas.hist", { dataset: { testid: "histogram" }, role: "img", "aria-label": histogramText(d.histogram) }),
        h("p.hist-text", { dataset: { testid: "histogram-text" } }, histogramText(d.histogram)),
        calibration(d)),
    ),
    countsPanel(d),
    h("h2", {}, "Recent NG and ERROR parts"),
    finder(d, me),
    rejectStrip(d, me),
    actions(d, me),
    teachPanel(d, me, { view: (base) => Object.assign(view(base), { redraw }), act, confirmBox, blocked: offlineReason(d) }),
  ].filter(Boolean));
  const canvas = root.querySelector("canvas.hist");
  if (canvas) drawHistogram(canvas, d.histogram);
}
