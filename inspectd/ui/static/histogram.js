// Recent scores against the threshold and the calibration's good-score quantiles.
import { fmt } from "./dom.js";

const ROWS = 3; // label rows above the plot; a label with no room in any is left to the text

// The same picture in words (the canvas's text alternative, and what a label had no room for).
export function histogramText(hist) {
  const q = Object.entries(hist.quantiles || {}).filter(([k]) => k !== "max")
    .map(([k, v]) => `${k} ${fmt.score(v)}`).join(", ");
  return `${hist.n} recent scores, ${hist.n_ok ?? "?"} accepted and ${hist.n - (hist.n_ok ?? 0)} rejected` +
    (typeof hist.threshold === "number" ? `; threshold ${fmt.score(hist.threshold)}` : "") +
    (q ? `; calibration's good scores: ${q}` : "") +
    (hist.over ? `; ${hist.over} above ${fmt.score(hist.max)} (the last bar)` : "");
}

export function drawHistogram(canvas, hist) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, hgt);
  const rowH = 15;
  const pad = { l: 8, r: 8, t: 6 + rowH * ROWS, b: 24 };
  const plotW = w - pad.l - pad.r, plotH = hgt - pad.t - pad.b;
  const bins = hist.ok.length;
  const peak = Math.max(1, ...hist.ok.map((v, i) => v + hist.ng[i]));
  const x = (score) => pad.l + (Math.min(score, hist.max) / hist.max) * plotW;
  const bw = plotW / bins;
  for (let i = 0; i < bins; i++) {
    const okH = (hist.ok[i] / peak) * plotH, ngH = (hist.ng[i] / peak) * plotH;
    g.fillStyle = "#2e7d4f";
    g.fillRect(pad.l + i * bw + 1, pad.t + plotH - okH, bw - 2, okH);
    g.fillStyle = "#c62828";
    g.fillRect(pad.l + i * bw + 1, pad.t + plotH - okH - ngH, bw - 2, ngH);
  }
  g.font = "13px system-ui, sans-serif";
  g.textBaseline = "alphabetic";
  // labels: the threshold first, then the quantiles left to right, each in the first row where
  // it overlaps nothing (quantiles of a tight good distribution sit within a few pixels)
  const placed = [];
  const label = (text, at, color) => {
    const tw = g.measureText(text).width;
    const left = Math.max(0, Math.min(at + 3, w - tw));
    for (let row = 0; row < ROWS; row++) {
      const box = { x: left, y: row * rowH + 2, w: tw, h: rowH - 2, text };
      if (!placed.some((b) => b.y === box.y && box.x < b.x + b.w + 6 && b.x < box.x + box.w + 6)) {
        placed.push(box);
        g.fillStyle = color;
        g.fillText(text, box.x, box.y + box.h - 2);
        return box;
      }
    }
    return null;
  };
  if (typeof hist.threshold === "number") {
    const tx = x(hist.threshold);
    g.strokeStyle = "#111"; g.lineWidth = 2;
    g.beginPath(); g.moveTo(tx, pad.t - 4); g.lineTo(tx, pad.t + plotH); g.stroke();
    label(`threshold ${fmt.score(hist.threshold)}`, tx, "#111");
  }
  g.lineWidth = 1;
  g.setLineDash([4, 4]);
  g.strokeStyle = "#4b5875";
  Object.entries(hist.quantiles || {}).filter(([k]) => k !== "max")
    .sort((a, b) => a[1] - b[1])
    .forEach(([name, v]) => {
      g.beginPath(); g.moveTo(x(v), pad.t); g.lineTo(x(v), pad.t + plotH); g.stroke();
      label(name, x(v), "#3b4660");
    });
  g.setLineDash([]);
  // the axis: 0, the threshold's multiples, the end (">" when scores lie beyond it)
  g.fillStyle = "#3b4660";
  const ticks = [[0, "0"], [hist.max / 2, fmt.score(hist.max / 2)], [hist.max, `${hist.over ? "≥ " : ""}${fmt.score(hist.max)}`]];
  let right = -Infinity;
  ticks.forEach(([v, text], i) => {
    const tw = g.measureText(text).width;
    const at = i === 0 ? pad.l : i === ticks.length - 1 ? w - pad.r - tw : x(v) - tw / 2;
    if (at > right + 8) { g.fillText(text, at, hgt - 6); right = at + tw; }
  });
  canvas.dataset.labels = JSON.stringify(placed);
  canvas.setAttribute("aria-label", histogramText(hist));
}
