// The station view: the live part, recent rejects to review, the score picture, calibration,
// and the operator's actions with the station's answers.
import { answerText, fmt, h, overlayUrl, post } from "./dom.js";
import { drawHistogram } from "./histogram.js";

const LABEL_TEXT = { false_reject: "reviewed: good (false reject)", missed_defect: "reviewed: missed defect" };

function reviewButton(d, part, label, text, me, refresh) {
  if (!me.operator) return null;
  return h("button.review", {
    dataset: { testid: `review-${label}` },
    onclick: async (ev) => {
      ev.target.disabled = true;
      const a = await post("/api/review", { base: d.base, seq: part.seq, part_id: part.part_id, label });
      showAnswer(a);
      refresh();
    },
  }, text);
}

let answerBox = null;
function showAnswer(a) {
  if (answerBox) answerBox.replaceChildren(h(`div.answer.${a.ok ? "ok" : "bad"}`, { dataset: { testid: "answer" } }, answerText(a)));
}

function livePart(d, me, refresh) {
  const last = d.last;
  const ov = d.overlay;
  const img = ov
    ? h("figure.live", {},
        h("img", { src: overlayUrl(d.base, ov.seq), alt: "overlay", dataset: { testid: "live-overlay" } }),
        h("figcaption", {}, `overlay of #${ov.seq} ${ov.part_id || ""} (${ov.verdict || "?"})`))
    : h("div.live.none", {}, "no overlay received yet (the station sends NG overlays by default: mqtt.overlays)");
  if (!last) return h("div.panel", {}, img, h("p", {}, "no part yet"));
  const t = last.threshold;
  const frac = typeof t === "number" && t > 0 && typeof last.score === "number" ? Math.min(1, last.score / (2 * t)) : null;
  return h("div.panel", {},
    img,
    h("div.live-verdict", {},
      h(`span.verdict.v-${last.verdict}`, { dataset: { testid: "station-verdict" } }, last.verdict),
      h("span.part", {}, `#${last.seq} ${last.part_id}`),
    ),
    h("div.scorebar", { title: "score against the threshold (the mark in the middle)" },
      frac === null ? null : h(`div.fill.v-${last.verdict}`, { style: `width:${(frac * 100).toFixed(1)}%` }),
      h("div.mark")),
    h("div.score", {}, `score ${fmt.score(last.score)}  threshold ${fmt.score(t)}  latency ${fmt.ms(last.latency_ms)}`),
    last.error ? h("div.reason", {}, last.error) : null,
    last.verdict === "OK"
      ? (d.last_reviewed ? h("div.reviewed", {}, LABEL_TEXT[d.last_reviewed])
        : reviewButton(d, last, "missed_defect", "Missed defect", me, refresh))
      : null,
  );
}

function rejectStrip(d, me, refresh) {
  if (!d.rejects.length) return h("p.muted", {}, "no NG or ERROR part since the page's server started");
  return h("div.strip", { dataset: { testid: "rejects" } }, d.rejects.map((r) =>
    h(`div.reject.v-${r.verdict}`, { dataset: { testid: "reject", seq: r.seq } },
      r.overlay ? h("img", { src: overlayUrl(d.base, r.seq), alt: `overlay ${r.part_id}` }) : h("div.thumb.none", {}, "no overlay"),
      h("div.rhead", {}, h(`b.v-${r.verdict}`, {}, r.verdict), ` #${r.seq} ${r.part_id}`),
      h(`div.${r.error ? "reason" : "why"}`, {}, r.error || `score ${fmt.score(r.score)} ≥ ${fmt.score(r.threshold)}, ${(r.regions || []).length} region(s)`),
      h("div.when", {}, fmt.time(r.t_verdict)),
      r.reviewed ? h("div.reviewed", { dataset: { testid: "reviewed" } }, LABEL_TEXT[r.reviewed])
        : reviewButton(d, r, "false_reject", "Good (false reject)", me, refresh),
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

function actions(d, me, refresh) {
  answerBox = h("div.answers");
  const recent = d.answers.filter((a) => a.command !== "reviews").slice(0, 5);
  const history = h("ul.history", { dataset: { testid: "answers" } }, recent.map((a) =>
    h(`li.${a.ok ? "ok" : "bad"}`, {}, `${fmt.time(a.ts)} ${a.by || ""}: ${answerText(a)}`)));
  if (!me.operator) return h("div.panel", {}, h("h3", {}, "Actions"), h("p.muted", {}, "viewers see; operators review and act"), history);
  const product = h("input", { type: "text", placeholder: "product", value: d.product || "", "aria-label": "product" });
  const send = async (command, args) => {
    showAnswer({ ok: true, command, result: { sending: "…" } });
    showAnswer(await post("/api/command", { base: d.base, command, args }));
    refresh();
  };
  return h("div.panel", {},
    h("h3", {}, "Actions"),
    h("div.buttons", {},
      h("button", { dataset: { testid: "reload" }, onclick: () => send("reload_thresholds", {}) }, "Reload thresholds"),
      h("span.switch", {}, product, h("button", { dataset: { testid: "switch" }, onclick: () => send("product", { product: product.value.trim() }) }, "Switch product")),
    ),
    answerBox,
    history,
  );
}

export function renderStation(root, d, me, refresh) {
  const rv = d.reviews_today;
  root.replaceChildren(...[
    h(`div.station-head.state-${d.state}${d.health === "degraded" ? ".degraded" : ""}`, {},
      h("h2", {}, d.name),
      h("span.state", { dataset: { testid: "station-state" } }, d.state),
      h("span.sub", {}, `${d.product || "–"} · ${d.model || ""} ${d.model_sha256 || ""} · ${d.engine || ""}`),
      h("span.reviews", { dataset: { testid: "reviews-today" } },
        rv ? `${rv.false_reject} false reject${rv.false_reject === 1 ? "" : "s"} reviewed today · ${rv.missed_defect} missed` : "reviews today: –"),
    ),
    d.problems.length ? h("ul.problems.big", {}, d.problems.map((p) => h("li", {}, p))) : null,
    h("div.grid", {},
      livePart(d, me, refresh),
      h("div.panel", {},
        h("h3", {}, "Scores (green OK, red NG) against the threshold and calibration's good-score quantiles"),
        h("canvas.hist", { dataset: { testid: "histogram" } }),
        calibration(d)),
    ),
    h("h3", {}, "Recent NG and ERROR parts"),
    rejectStrip(d, me, refresh),
    actions(d, me, refresh),
  ].filter(Boolean));
  const canvas = root.querySelector("canvas.hist");
  if (canvas) drawHistogram(canvas, d.histogram);
}
