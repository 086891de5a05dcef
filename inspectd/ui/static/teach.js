// The station view's teach panel (operators): teach from the next N parts, refit from the
// reviews, then accept or discard the version written; roll back. A teach's progress is the
// station's last …/teach event (d.teach); every action asks first, as the product switch does.
import { fmt, h } from "./dom.js";

function progress(t) {
  if (!t) return "no teach since this page started";
  const what = `${t.kind || "teach"} of ${t.product}`;
  if (t.state === "collecting") return `${what}: taking parts, ${t.taken ?? 0} of ${t.count} (each recorded NG "teach": hold them)`;
  if (t.state === "fitting") return `${what}: fitting and calibrating…`;
  if (t.state === "failed") return `${what} failed: ${t.error || "no reason given"}`;
  const f = t.figures || {};
  const caught = f.n_defects ? `, known defects caught ${f.defects_caught ?? "?"} of ${f.n_defects}` : "";
  return `${what}: version ${t.version} written, not active — image threshold ${fmt.score(t.image_threshold)}, `
    + `${f.n_fit} parts fitted, ${f.n_good} calibrated, false-reject rate ≤ ${fmt.score(f.frr_bound)} (95 %)${caught}`;
}

// helpers: { view, act, confirmBox, blocked } from the station view
export function teachPanel(d, me, { view, act, confirmBox, blocked }) {
  if (!me.operator) return null;
  const v = view(d.base);
  const t = d.teach;
  const send = (command, args) => act(d, command, "/api/command", { base: d.base, command, args });
  const ask = (kind, extra) => () => { v.confirm = { kind, ...extra }; v.redraw(); };
  const written = t && t.state === "written" && t.version;
  const busy = t && (t.state === "collecting" || t.state === "fitting");
  const c = v.confirm;
  const count = h("input", {
    type: "number", min: "4", max: "10000", value: String(v.teachCount || 60), "aria-label": "parts to teach from",
    dataset: { testid: "teach-count", focus: "teach-count" }, disabled: !!blocked,
    oninput: (e) => { v.teachCount = Number(e.target.value); },
  });
  const confirmations = {
    teach: () => confirmBox(d, `Teach ${d.product} from the next ${c.count} parts?`,
      "They are recorded NG (held, never OK); then the station fits and calibrates a new version, not active until accepted.",
      "Start teaching", () => send("teach", { product: d.product, count: c.count }), "teach"),
    refit: () => confirmBox(d, `Refit ${d.product} from the reviewed parts?`,
      "The false rejects go into the memory and the calibration; the reviewed defects are the report's defect set.",
      "Refit", () => send("refit", { product: d.product }), "refit"),
    accept: () => confirmBox(d, `Make ${c.product} version ${c.version} active?`,
      `${d.name} switches to it between two parts when it runs ${c.product}.`,
      "Accept", () => send("accept", { product: c.product, version: c.version }), "accept"),
    discard: () => confirmBox(d, `Discard ${c.product} version ${c.version}?`, "It is deleted from the station's disk.",
      "Discard", () => send("discard", { product: c.product, version: c.version }), "discard"),
    rollback: () => confirmBox(d, `Roll ${d.product} back to the version the active one was made from?`,
      `${d.name} switches to it between two parts.`, "Roll back", () => send("rollback", { product: d.product }), "rollback"),
  };
  return h("div.panel", { dataset: { testid: "teach" } },
    h("h2", {}, "Teach, accept, roll back"),
    h("p", { dataset: { testid: "teach-state" }, role: "status", "aria-live": "polite" }, progress(t)),
    h("div.buttons", {},
      count,
      h("button", {
        dataset: { testid: "teach-start", focus: "teach-start" }, disabled: !!(blocked || busy), title: blocked || "",
        onclick: () => { const n = v.teachCount || 60; if (n >= 4) ask("teach", { count: n })(); },
      }, "Teach from the next parts"),
      h("button.secondary", { dataset: { testid: "refit", focus: "refit" }, disabled: !!(blocked || busy), onclick: ask("refit") }, "Refit from reviews"),
      written ? h("button", { dataset: { testid: "teach-accept", focus: "teach-accept" }, disabled: !!blocked,
        onclick: ask("accept", { product: t.product, version: t.version }) }, `Accept version ${t.version}`) : null,
      written ? h("button.secondary", { dataset: { testid: "teach-discard", focus: "teach-discard" }, disabled: !!blocked,
        onclick: ask("discard", { product: t.product, version: t.version }) }, `Discard version ${t.version}`) : null,
      h("button.secondary", { dataset: { testid: "rollback", focus: "rollback" }, disabled: !!blocked, onclick: ask("rollback") }, "Roll back"),
    ),
    c && confirmations[c.kind] ? confirmations[c.kind]() : null,
  );
}
