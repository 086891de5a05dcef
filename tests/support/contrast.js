// WCAG 2.x contrast of every piece of text under an element, with the colours as drawn: the
// text's colour blended by the opacity of it and its ancestors over the first opaque
// background behind it. Large text (24 px, or 18.66 px bold) needs 3:1, the rest 4.5:1.
// Returns the texts that fall short, with their ratio. (tests/support/ui.py runs it.)
(root) => {
  const rgba = (c) => { const m = c.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (el) => { for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor); if (c[3] > 0.5) return c; } return [255, 255, 255, 1]; };
  const opacity = (el) => { let o = 1; for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity); return o; };
  const short = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement; const text = n.textContent.trim();
    if (!text || !el.getClientRects().length) continue;
    const s = getComputedStyle(el);
    const bg = background(el), fg = rgba(s.color), a = fg[3] * opacity(el);
    const drawn = [0, 1, 2].map((i) => fg[i] * a + bg[i] * (1 - a));
    const [hi, lo] = [lum(drawn), lum(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const px = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
    const need = px >= 24 || (px >= 18.66 && bold) ? 3 : 4.5;
    if (ratio < need) short.push(`${text.slice(0, 40)}: ${ratio.toFixed(2)}:1 (needs ${need})`);
  }
  return short;
}
