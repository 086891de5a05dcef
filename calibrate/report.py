"""The calibration report a quality engineer signs: calibration.png and calibration.md in the
bundle. Drawn with OpenCV (already on the box) rather than a plotting library."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from inspectd import threshold_stats as stats
from inspectd.bundle import Thresholds
from inspectd.outputs.overlay import blend_heatmap
from inspectd.preprocess import Geometry

if TYPE_CHECKING:
    from inspectd.calibrate.calibration import Result

SIZE = (1600, 960)  # width, height of calibration.png
WORST = 8  # good parts shown as thumbnails
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _GRID = (30, 30, 30), (225, 225, 225)
_GOOD, _DEFECT = (180, 110, 30), (40, 40, 210)  # BGR: blue, red
_LINES = {"threshold": (0, 0, 0), "tail fit": (0, 140, 255), "F1-optimal": (160, 40, 160)}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _recall_cell(p: dict) -> str:
    """One operating point of train.metrics.operating_points as a table cell."""
    if p.get("recall") is None:
        return p["note"]
    note = f"; {p['note']}" if p.get("note") else ""
    return (
        f"{p['recall']:.1%} (threshold {p['threshold']:.6g}, {p['good_rejected']} of "
        f"{p['good']} good rejected{note})"
    )


def _text(
    img: np.ndarray,
    s: str,
    xy: tuple[int, int],
    scale: float = 0.5,
    colour: tuple[int, int, int] = _INK,
    thick: int = 1,
) -> None:
    cv2.putText(img, s, xy, _FONT, scale, colour, thick, cv2.LINE_AA)


class _Axes:
    """A plot area inside `box` (x, y, w, h) of `img`, mapping data to pixels."""

    def __init__(
        self,
        img: np.ndarray,
        box: tuple[int, int, int, int],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        title: str,
        xlabel: str,
        ylabel: str,
        log_y: bool = False,
    ) -> None:
        self.img, self.log_y = img, log_y
        x, y, w, h = box
        self.x0, self.y0, self.x1, self.y1 = x + 70, y + 30, x + w - 15, y + h - 45
        self.xlim = xlim if xlim[1] > xlim[0] else (xlim[0], xlim[0] + 1e-9)
        lo, hi = (np.log10(v) for v in ylim) if log_y else ylim
        self.ylim = (lo, hi if hi > lo else lo + 1e-9)
        _text(img, title, (x + 70, y + 18), 0.55, thick=1)
        _text(img, xlabel, ((self.x0 + self.x1) // 2 - 60, self.y1 + 38), 0.45)
        _text(img, ylabel, (x + 2, self.y0 - 8), 0.45)
        for i in range(6):
            fx, fy = i / 5, i / 5
            px = int(self.x0 + fx * (self.x1 - self.x0))
            py = int(self.y1 - fy * (self.y1 - self.y0))
            cv2.line(img, (px, self.y0), (px, self.y1), _GRID, 1)
            cv2.line(img, (self.x0, py), (self.x1, py), _GRID, 1)
            xv = self.xlim[0] + fx * (self.xlim[1] - self.xlim[0])
            yv = self.ylim[0] + fy * (self.ylim[1] - self.ylim[0])
            _text(img, f"{xv:.3g}", (px - 18, self.y1 + 18), 0.4)
            _text(img, f"1e{yv:.1f}" if log_y else f"{yv:.3g}", (x + 8, py + 4), 0.4)
        cv2.rectangle(img, (self.x0, self.y0), (self.x1, self.y1), _INK, 1)

    def px(self, xv: float, yv: float) -> tuple[int, int]:
        if self.log_y:
            yv = np.log10(max(yv, 10 ** self.ylim[0]))
        fx = (xv - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (yv - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        fx, fy = min(max(fx, 0.0), 1.0), min(max(fy, 0.0), 1.0)
        return int(self.x0 + fx * (self.x1 - self.x0)), int(self.y1 - fy * (self.y1 - self.y0))

    def curve(
        self, xs: np.ndarray, ys: np.ndarray, colour: tuple[int, int, int], thick: int = 2
    ) -> None:
        pts = np.array([self.px(float(a), float(b)) for a, b in zip(xs, ys, strict=True)], np.int32)
        cv2.polylines(self.img, [pts], False, colour, thick, cv2.LINE_AA)

    def vline(self, xv: float, colour: tuple[int, int, int], label: str, row: int) -> None:
        px, _ = self.px(xv, self.ylim[0])
        cv2.line(self.img, (px, self.y0), (px, self.y1), colour, 2)
        y = self.y0 + 18 + 18 * row  # a legend in the top right corner, one row per line
        cv2.line(self.img, (self.x1 - 200, y - 4), (self.x1 - 180, y - 4), colour, 2)
        _text(self.img, label, (self.x1 - 172, y), 0.45, colour)


def _histogram(
    img: np.ndarray, box: tuple[int, int, int, int], result: Result, t: Thresholds
) -> None:
    good = result.good.scores
    bad = result.defects.scores if result.defects is not None else np.empty(0)
    lines = {"threshold": t.image}
    if result.tail is not None:
        lines["tail fit"] = result.tail.upper
    if result.defect_metrics:
        lines["F1-optimal"] = result.defect_metrics["f1_threshold"]
    everything = np.r_[good, bad, list(lines.values())]
    lo, hi = float(everything.min()), float(everything.max())
    hi += 0.04 * (hi - lo)  # the threshold line off the frame
    edges = np.linspace(lo, hi + 1e-12, 61)
    hg = np.histogram(good, edges)[0] / max(1, good.size)
    hb = np.histogram(bad, edges)[0] / max(1, bad.size) if bad.size else np.zeros(60)
    ax = _Axes(
        img,
        box,
        (lo, hi),
        (0.0, float(max(hg.max(), hb.max(), 1e-9)) * 1.1),
        "image scores (fraction of parts per bin)",
        "score",
        "fraction",
    )
    for h, colour in ((hg, _GOOD), (hb, _DEFECT)):
        for i, v in enumerate(h):
            if v > 0:
                (xa, ya), (xb, _) = ax.px(edges[i], v), ax.px(edges[i + 1], 0)
                cv2.rectangle(
                    img,
                    (xa, ya),
                    (max(xa + 1, xb - 1), ax.y1),
                    colour,
                    -1 if colour == _GOOD else 2,
                )
    for row, (name, value) in enumerate(lines.items()):
        ax.vline(value, _LINES[name], f"{name} {value:.4g}", row)
    _text(img, f"good ({good.size})", (ax.x1 - 200, ax.y0 + 80), 0.45, _GOOD, 2)
    if bad.size:
        _text(img, f"defects ({bad.size})", (ax.x1 - 200, ax.y0 + 100), 0.45, _DEFECT, 2)


def _roc(img: np.ndarray, box: tuple[int, int, int, int], result: Result) -> None:
    assert result.defects is not None
    labels = np.r_[
        np.zeros(result.good.scores.size, bool), np.ones(result.defects.scores.size, bool)
    ]
    fpr, tpr = stats.roc_curve(labels, np.r_[result.good.scores, result.defects.scores])
    ax = _Axes(
        img,
        box,
        (0.0, 1.0),
        (0.0, 1.0),
        f"ROC (image AUROC {result.defect_metrics['image_auroc']:.3f})",
        "false-reject rate (good parts)",
        "defects found",
    )
    ax.curve(np.array([0.0, 1.0]), np.array([0.0, 1.0]), _GRID, 1)
    ax.curve(fpr, tpr, _DEFECT)
    found = result.defect_metrics["recall"]
    frr = float((result.good.scores >= result.image).mean())
    cv2.circle(img, ax.px(frr, found), 6, _INK, 2)
    _text(img, f"threshold: recall {found:.1%}", ax.px(frr, found), 0.45)


def _tail(img: np.ndarray, box: tuple[int, int, int, int], result: Result) -> None:
    """Without defects: how often good scores exceed x, as measured and as the tail fit says."""
    s = np.sort(result.good.scores)
    n = s.size
    exceed = 1.0 - np.arange(1, n + 1) / (n + 1)
    target = result.order.frr_bound
    hi = max(float(s[-1]), result.image, result.tail.upper if result.tail else 0.0)
    hi += 0.04 * (hi - float(s[0]))
    floor = min(target, 1.0 / (n + 1)) / 3
    ax = _Axes(
        img,
        box,
        (float(s[0]), hi),
        (floor, 1.0),
        "good scores: P(score > x)",
        "score",
        "exceed",
        log_y=True,
    )
    ax.curve(s, exceed, _GOOD)
    if result.tail is not None:
        t = result.tail
        xs = np.linspace(t.u, hi, 50)
        zeta = t.n_tail / n
        z = 1 + t.shape * (xs - t.u) / t.scale
        ys = zeta * (
            np.exp(-(xs - t.u) / t.scale)
            if abs(t.shape) < 1e-9
            else np.where(z > 0, np.abs(z) ** (-1 / t.shape), 0.0)
        )
        ax.curve(xs, np.maximum(ys, floor), _LINES["tail fit"])
    ax.vline(result.image, _LINES["threshold"], f"threshold {result.image:.4g}", 0)


def _thumbnails(img: np.ndarray, top: int, result: Result, threshold: float) -> None:
    good = result.good
    worst = np.argsort(-good.scores)[:WORST]
    _text(
        img,
        f"the {len(worst)} highest-scoring good parts (heat: red = image threshold)",
        (30, top - 12),
        0.55,
    )
    side = (SIZE[0] - 60) // WORST - 10
    for k, i in enumerate(worst):
        tile = cv2.cvtColor(good.inputs[i], cv2.COLOR_RGB2BGR)
        h, w = good.maps[i].shape
        blend_heatmap(
            tile, good.maps[i], threshold, Geometry(0, 0, tile.shape[1] / w, tile.shape[0] / h)
        )
        tile = cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA)
        x = 30 + k * (side + 10)
        img[top : top + side, x : x + side] = tile
        _text(img, f"{good.scores[i]:.4g}", (x, top + side + 18), 0.45)
        _text(img, Path(good.names[i]).name[:22], (x, top + side + 36), 0.38)


def write_report(result: Result, t: Thresholds, bundle_dir: Path) -> list[Path]:
    w, h = SIZE
    img = np.full((h, w, 3), 255, np.uint8)
    o = result.order
    _text(
        img,
        f"{result.bundle.name}: image threshold {t.image:.6g}   false-reject rate <= "
        f"{o.frr_bound:.3g} at {o.confidence:.0%} ({t.method.split(';')[0]})",
        (30, 32),
        0.65,
        thick=2,
    )
    _text(
        img,
        f"{t.n_good} good parts; pixel threshold {t.pixel:.4g}, regions >= "
        f"{t.min_region_area} map px; model {t.model_sha256[:12]}; {t.created}",
        (30, 58),
        0.5,
    )
    _histogram(img, (20, 80, 780, 560), result, t)
    if result.defects is not None:
        _roc(img, (800, 80, 780, 560), result)
    else:
        _tail(img, (800, 80, 780, 560), result)
    _thumbnails(img, 700, result, t.image)
    png = bundle_dir / "calibration.png"
    if not cv2.imwrite(str(png), img):
        raise OSError(f"could not write {png}")
    md = bundle_dir / "calibration.md"
    md.write_text(markdown(result, t))
    return [png, md]


def markdown(result: Result, t: Thresholds) -> str:
    from inspectd.calibrate.summary import good_regions_text

    o = result.order
    q = t.quantiles
    rows = [
        ("image threshold", f"{t.image:.6g}"),
        ("method", t.method),
        ("target false-reject rate", f"{t.target_frr:g}"),
        ("bound (order statistic)", f"<= {o.frr_bound:.4g} with {o.confidence:.0%} confidence"),
        ("good parts for the target", str(stats.parts_needed(t.target_frr or 0.5, o.confidence))),
        ("good parts used", str(t.n_good)),
        ("good parts above the threshold", str(o.exceed)),
        ("training images left out", str(result.dropped_training)),
        ("parts that could not be scored", str(len(result.skipped))),
        ("pixel threshold", f"{t.pixel:.6g}"),
        ("smallest region (map pixels)", str(t.min_region_area)),
        ("regions on good parts", good_regions_text(result)),
        ("good score quantiles", ", ".join(f"{k} {v:.4g}" for k, v in q.items())),
        ("model sha256", f"`{t.model_sha256}`"),
        ("created", f"{t.created} (inspectd {t.tool_version})"),
    ]
    if result.tail is not None:
        tf = result.tail
        rows.insert(
            4,
            (
                "tail fit (generalised Pareto)",
                f"{tf.threshold:.6g}, upper bound {tf.upper:.6g} (shape {tf.shape:.3f}, "
                f"scale {tf.scale:.3g}, top {tf.n_tail} scores)",
            ),
        )
    out = [f"# Calibration of {result.bundle.name}", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    m = result.defect_metrics
    if m:
        out += [
            "",
            "## Defects",
            "",
            "| | |",
            "|---|---|",
            f"| defect parts | {m['n_defects']} |",
            f"| recall at the threshold | {m['recall']:.1%} |",
            *(
                f"| recall @ {float(k):.1%} FRR of these good parts | {_recall_cell(p)} |"
                for k, p in m.get("recall_at_frr", {}).items()
            ),
            f"| image AUROC | {m['image_auroc']:.4f} |",
            f"| F1-optimal threshold | {m['f1_threshold']:.6g} (F1 {m['f1_max']:.3f}) |",
        ]
        if "pixel_auroc" in m:
            out += [
                f"| pixel AUROC | {m['pixel_auroc']:.4f} |",
                f"| found defects with a region on the defect | {m['located']:.1%} |",
                f"| defect pixels at or above the pixel threshold | {m['pixel_recall']:.1%} |",
            ]
        by_type = m.get("recall_at_frr_by_type", {})
        out += [
            "",
            "| defect type | recall at the threshold | recall @ 1 % FRR | recall @ 0.1 % FRR |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {d} | {r:.1%} | {_pct(by_type.get(d, {}).get('0.01'))} "
            f"| {_pct(by_type.get(d, {}).get('0.001'))} |"
            for d, r in m["recall_by_type"].items()
        ]
        out += [
            "",
            "The F1-optimal threshold depends on how many defects the set holds; it is "
            "reported, not used.",
        ]
    if result.skipped:
        out += ["", "## Parts that could not be scored", ""] + [
            f"- {s}" for s in result.skipped[:50]
        ]
    out += ["", "![calibration](calibration.png)", ""]
    return "\n".join(out)
