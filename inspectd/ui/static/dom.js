// h("div.tile.ok", {dataset: {testid: "x"}}, "text", child): elements without innerHTML, so
// part ids and reasons from the stations can never turn into markup.
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replace root's children, keeping keyboard focus: views are rebuilt as parts arrive, and a
// rebuilt button is a new element, so focus fell to <body> mid-Tab. Focusable elements carry a
// data-focus key; the new element with the same key takes the focus back.
export function rerender(root, children) {
  const active = document.activeElement;
  const key = active && active !== document.body && root.contains(active) ? active.dataset.focus : null;
  const caret = key && typeof active.selectionStart === "number" ? [active.selectionStart, active.selectionEnd] : null;
  root.replaceChildren(...children);
  if (key) {
    const again = root.querySelector(`[data-focus="${CSS.escape(key)}"]`);
    if (again) again.focus({ preventScroll: true });
    if (again && caret && typeof again.setSelectionRange === "function") again.setSelectionRange(...caret);
  }
}

export const fmt = {
  score: (v) => (typeof v === "number" ? v.toFixed(4) : "–"),
  pct: (v) => (typeof v === "number" ? `${(v * 100).toFixed(1)} %` : "–"),
  ms: (v) => (typeof v === "number" ? `${v.toFixed(1)} ms` : "–"),
  time: (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–"),
  num: (v, d = 1) => (typeof v === "number" ? v.toFixed(d) : "–"),
};

// A verdict decided after its trigger's deadline (`late` on …/verdict): the PLC was answered NG
// "late" at the deadline and rejected the part unseen, whatever this verdict says.
export const LATE_WHY = "late: decided after its trigger's deadline; the PLC had been answered NG and rejected the part";

export function lateBadge(v) {
  return v && v.late ? h("span.late", { dataset: { testid: "late" }, title: LATE_WHY }, "late") : null;
}

export function overlayUrl(base, seq) {
  return `/api/overlay?base=${encodeURIComponent(base)}&seq=${seq}`;
}

// POST JSON to an action route; resolves to the station's answer (or the refusal).
export async function post(path, body) {
  let r;
  try {
    r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    return { ok: false, error: `not sent: the page's server is not reachable (${e.message})` };
  }
  let doc;
  try { doc = await r.json(); } catch { doc = { ok: false, error: `HTTP ${r.status}` }; }
  return { status: r.status, ...doc };
}

// One line of text for an answer: what the station said, or why it refused.
export function answerText(a) {
  if (a.error) return a.error;
  if (a.ok) {
    const r = a.result || {};
    const rest = Object.entries(r).filter(([k]) => !["command", "ok", "today", "stored", "by"].includes(k))
      .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
    return `${a.command}: done${rest ? " — " + rest : ""}`;
  }
  const f = a.refusal || {};
  return `${a.command}: refused — ${f.detail || f.error || "no answer"}`;
}
