// Recent scores against the threshold and the calibration's good-score quantiles.
export function drawHistogram(canvas, hist) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, hgt);
  const pad = { l: 8, r: 8, t: 22, b: 24 };
  const plotW = w - pad.l - pad.r, plotH = hgt - pad.t - pad.b;
  const bins = hist.ok.length;
  const peak = Math.max(1, ...hist.ok.map((v, i) => v + hist.ng[i]));
  const x = (score) => pad.l + (score / hist.max) * plotW;
  const bw = plotW / bins;
  for (let i = 0; i < bins; i++) {
    const okH = (hist.ok[i] / peak) * plotH, ngH = (hist.ng[i] / peak) * plotH;
    g.fillStyle = "#3f9f5f";
    g.fillRect(pad.l + i * bw + 1, pad.t + plotH - okH, bw - 2, okH);
    g.fillStyle = "#d64545";
    g.fillRect(pad.l + i * bw + 1, pad.t + plotH - okH - ngH, bw - 2, ngH);
  }
  g.font = "13px system-ui, sans-serif";
  const marks = Object.entries(hist.quantiles || {}).filter(([k]) => k !== "max");
  g.setLineDash([4, 4]);
  g.strokeStyle = "#6b7a99";
  g.fillStyle = "#4b5875";
  marks.forEach(([name, v], i) => {
    g.beginPath(); g.moveTo(x(v), pad.t); g.lineTo(x(v), pad.t + plotH); g.stroke();
    g.fillText(name, x(v) + 3, pad.t + 12 + 14 * (i % 2));
  });
  g.setLineDash([]);
  if (typeof hist.threshold === "number") {
    g.strokeStyle = "#111"; g.lineWidth = 2;
    g.beginPath(); g.moveTo(x(hist.threshold), 4); g.lineTo(x(hist.threshold), pad.t + plotH); g.stroke();
    g.fillStyle = "#111";
    g.fillText(`threshold ${hist.threshold.toFixed(4)}`, Math.min(x(hist.threshold) + 4, w - 130), 14);
  }
  g.fillStyle = "#4b5875";
  g.fillText("0", pad.l, hgt - 6);
  const right = hist.max.toFixed(3);
  g.fillText(right, w - pad.r - g.measureText(right).width, hgt - 6);
  const n = `${hist.n} recent scores`;
  g.fillText(n, (w - g.measureText(n).width) / 2, hgt - 6);
}
