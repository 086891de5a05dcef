// The line view: a tile per station.
import { productLine, shiftLine } from "./counts.js";
import { fmt, h, lateBadge, overlayUrl, rerender } from "./dom.js";

const STATE_TEXT = { online: "online", offline: "OFFLINE", stopped: "STOPPED", unknown: "no status" };

// What the state badge says: an online station whose health stopped is not "online" to read.
function stateText(s) {
  if (s.state === "online" && s.silent) return "NOT RESPONDING";
  return STATE_TEXT[s.state] || s.state;
}

export function tile(s) {
  const last = s.last;
  const c = s.counts;
  const classes = ["tile", `state-${s.state}`];
  if (s.health === "degraded" || s.silent) classes.push("degraded");
  if (s.alarm) classes.push("alarm");
  if (last) classes.push(`v-${last.verdict}`);
  const ov = s.overlay;
  const img = ov
    ? h("figure.thumbfig", {},
        h("img.thumb", { src: overlayUrl(s.base, ov.seq), alt: `overlay of ${ov.part_id || "the last part"}` }),
        h("figcaption", {}, ov.seq ? `#${ov.seq} ${ov.verdict || ""}` : "newest"))
    : h("div.thumb.none", {}, "no overlay yet");
  const reviews = s.reviews_today;
  const down = s.state !== "online" && s.state !== "unknown";
  return h(`a.${classes.join(".")}`, { href: `#/station/${encodeURIComponent(s.base)}`, dataset: { testid: "tile", base: s.base, state: s.state, focus: `tile:${s.base}` } },
    down ? h("div.banner", { dataset: { testid: "banner" } }, `${STATE_TEXT[s.state]} — noticed ${s.noticed ? new Date(s.noticed * 1000).toLocaleTimeString() : "–"}`) : null,
    h("div.tile-head", {},
      h("h2.name", {}, s.name),
      h("span.state", { dataset: { testid: "state" } }, stateText(s)),
    ),
    h("div.sub", {}, `${s.product || "–"} · ${s.model || "model"} ${s.model_sha256 || ""}`),
    h("div.tile-body", {},
      img,
      h("div.last", {},
        last ? h(`div.verdict.v-${last.verdict}`, { dataset: { testid: "last-verdict" } }, last.verdict) : h("div.verdict", {}, "–"),
        lateBadge(last),
        last ? h("div.part", {}, `#${last.seq} ${last.part_id}`) : null,
        last ? h("div.score", {}, `score ${fmt.score(last.score)} / ${fmt.score(last.threshold)}`) : null,
        last && last.error ? h("div.reason", {}, last.error) : null,
      ),
    ),
    h("div.counts", { dataset: { testid: "counts" } },
      h("span.c-ok", {}, "OK ", h("b", { dataset: { testid: "count-OK" } }, c.OK)),
      h("span.c-ng", {}, "NG ", h("b", { dataset: { testid: "count-NG" } }, c.NG)),
      h("span.c-error", {}, "ERROR ", h("b", { dataset: { testid: "count-ERROR" } }, c.ERROR)),
      h("span.muted", {}, "last hour"),
    ),
    shiftLine(s.tally),
    productLine(s.tally),
    h("div.facts", {},
      h("span", {}, `reject ${fmt.pct(c.reject_rate)}`),
      h("span", { dataset: { testid: "per-min" } }, `${fmt.num(c.per_min)} parts/min`),
      h("span", {}, `latency p50 ${fmt.ms(s.latency_ms && s.latency_ms.p50)}`),
      reviews ? h("span", { dataset: { testid: "tile-reviews" } }, `${reviews.false_reject} false reject${reviews.false_reject === 1 ? "" : "s"} reviewed today`) : null,
    ),
    s.problems.length ? h("ul.problems", { dataset: { testid: "problems" } }, s.problems.map((p) => h("li", {}, p))) : null,
  );
}

// The whole line: every station's last hour and current shift added up.
function lineTotal(list) {
  const add = (pick) => {
    const sum = { OK: 0, NG: 0, ERROR: 0 };
    list.forEach((s) => { const c = pick(s); if (c) ["OK", "NG", "ERROR"].forEach((k) => { sum[k] += c[k] || 0; }); });
    const total = sum.OK + sum.NG + sum.ERROR;
    return `OK ${sum.OK} · NG ${sum.NG} · ERROR ${sum.ERROR} · yield ${fmt.pct(total ? sum.OK / total : null)}`;
  };
  const shift = list.map((s) => s.tally && s.tally.shift).find(Boolean);
  return h("div.line-total", { dataset: { testid: "line-total" } },
    h("b", {}, `Line (${list.length} station${list.length === 1 ? "" : "s"})`),
    shift ? h("span", {}, `${shift.name} shift: ${add((s) => s.tally && s.tally.shift)}`) : null,
    h("span", {}, `last hour: ${add((s) => s.counts)}`));
}

export function renderLine(root, stations) {
  // a fixed order: tiles that jump around are harder to read than a red one in its place
  const list = [...stations.values()].sort((a, b) => a.base.localeCompare(b.base));
  rerender(root, list.length ? [lineTotal(list), ...list.map(tile)] : []);
}
