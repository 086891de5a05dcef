// Counts the way a line reads them: this shift, this product (since the last switch), the last
// hour minute by minute, why parts were rejected. From inspectd/ui/tally.py, via the tile.
import { fmt, h } from "./dom.js";

const clock = (epoch) => new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function tallyText(c) {
  return `OK ${c.OK} · NG ${c.NG} · ERROR ${c.ERROR} · yield ${fmt.pct(c.yield)}`;
}

export function shiftLine(t, testid = "shift") {
  const s = t && t.shift;
  if (!s) return null;
  const late = t.counted_from > s.start ? ` (this page counts from ${clock(t.counted_from)})` : "";
  return h("div.tally", { dataset: { testid } }, h("b", {}, `${s.name} shift`), ` since ${clock(s.start)}${late}: ${tallyText(s)}`);
}

export function productLine(t, testid = "product-count") {
  const p = t && t.product;
  if (!p) return null;
  return h("div.tally", { dataset: { testid } }, h("b", {}, p.name), ` since ${clock(p.since)}: ${tallyText(p)}`);
}

// Parts a minute over the last hour, stacked OK / NG / ERROR, with the picture in words.
function trend(t) {
  const minutes = t.trend || [];
  const peak = Math.max(1, ...minutes.map((m) => m.total));
  const total = minutes.reduce((n, m) => n + m.total, 0);
  const rejects = minutes.reduce((n, m) => n + m.NG + m.ERROR, 0);
  const worst = minutes.reduce((w, m) => (m.NG + m.ERROR > w ? m.NG + m.ERROR : w), 0);
  const words = `last 60 minutes: ${total} parts, ${rejects} rejected; at most ${peak} parts and ${worst} rejects in a minute`;
  return h("figure.trend", {},
    h("div.bars", { role: "img", "aria-label": words, dataset: { testid: "trend" } }, minutes.map((m) =>
      h("div.bar", { title: `${m.total} parts, ${m.NG} NG, ${m.ERROR} ERROR` },
        ["ERROR", "NG", "OK"].map((k) => (m[k] ? h(`div.seg.k-${k}`, { style: `height:${(m[k] / peak * 100).toFixed(1)}%` }) : null))))),
    h("figcaption", {}, words));
}

function reasons(s) {
  if (!s || !s.reasons.length) return h("p.muted", { dataset: { testid: "reasons" } }, "no reject this shift");
  return h("table.reasons", { dataset: { testid: "reasons" } },
    h("caption", {}, `why parts were rejected, ${s.name} shift`),
    s.reasons.map((r) => h("tr", {}, h("th", { scope: "row" }, r.reason), h("td", {}, String(r.n)))));
}

// Where on the part this shift's rejects lie: the frame in 3 x 3, by each NG part's largest
// region (a cluster in one cell is a fixture, a tool or a mould cavity, not chance).
function positions(s) {
  if (!s || !s.positions) return null;
  const peak = Math.max(1, ...s.positions.flat());
  const rows = ["top", "middle", "bottom"], cols = ["left", "centre", "right"];
  return h("table.positions", { dataset: { testid: "positions" } },
    h("caption", {}, `where on the part, ${s.name} shift (largest region of each NG part)`),
    h("tr", {}, h("td"), cols.map((c) => h("th", { scope: "col" }, c))),
    s.positions.map((row, i) => h("tr", {}, h("th", { scope: "row" }, rows[i]),
      row.map((n) => h("td", { style: `background: rgba(198, 40, 40, ${(0.08 + 0.5 * n / peak).toFixed(2)})` }, String(n))))));
}

export function countsPanel(d) {
  const t = d.tally || {};
  const prev = t.previous_shift, prevProduct = t.previous_product;
  return h("div.panel", { dataset: { testid: "counts-panel" } },
    h("h2", {}, "Counts"),
    shiftLine(t, "shift-detail") || h("p.muted", {}, "no shifts configured (shifts: in the page's config)"),
    prev ? h("div.tally.muted", {}, `${prev.name} shift before: ${tallyText(prev)}`) : null,
    productLine(t, "product-detail"),
    prevProduct ? h("div.tally.muted", {}, `${prevProduct.name} before it: ${tallyText(prevProduct)}`) : null,
    h("div.tally", {}, h("b", {}, "last hour"), `: OK ${d.counts.OK} · NG ${d.counts.NG} · ERROR ${d.counts.ERROR} · reject ${fmt.pct(d.counts.reject_rate)} · ${fmt.num(d.counts.per_min)} parts/min`),
    trend(t),
    h("div.breakdown", {}, reasons(t.shift), positions(t.shift)));
}
