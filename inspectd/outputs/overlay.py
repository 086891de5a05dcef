"""The picture an operator looks at: the frame, the anomaly heatmap over the ROI, regions boxed."""

from __future__ import annotations

import cv2
import numpy as np

from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.inspection import Inspection
from inspectd.preprocess import Geometry

_COLOURS = {Verdict.OK: (80, 200, 80), Verdict.NG: (40, 40, 230), Verdict.ERROR: (0, 165, 255)}


def render(
    image: np.ndarray | None,
    record: VerdictRecord,
    anomaly_map: np.ndarray | None,
    geometry: Geometry | None,
) -> np.ndarray:
    """BGR uint8 overlay. The heatmap is scaled by the image threshold (red = at or above it),
    so colours mean the same on every part."""
    canvas: np.ndarray
    if image is None or image.dtype != np.uint8 or image.ndim not in (2, 3):
        canvas = np.full((240, 320, 3), 40, np.uint8)  # nothing usable to draw on
    elif image.ndim == 2 or image.shape[2] == 1:
        canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 3:
        canvas = image.copy()
    else:
        canvas = np.ascontiguousarray(image[:, :, :3])

    if anomaly_map is not None and geometry is not None and record.threshold:
        blend_heatmap(canvas, anomaly_map, record.threshold, geometry)

    colour = _COLOURS[record.verdict]
    for r in record.regions:
        cv2.rectangle(canvas, (r.x, r.y), (r.x + r.w - 1, r.y + r.h - 1), colour, 2)
    label = record.verdict.value
    if record.score is not None:
        label += f" {record.score:.4f}"
    if record.error:
        label += f" ({record.error[:40]})"
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(
        canvas,
        f"{record.part_id}  {label}",
        (6, 16),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        colour,
        1,
        cv2.LINE_AA,
    )
    return canvas


def blend_heatmap(
    canvas: np.ndarray, anomaly_map: np.ndarray, threshold: float, geometry: Geometry
) -> None:
    """Draw the map over its ROI of `canvas` (BGR, in place); red = at or above `threshold`."""
    x0, y0 = int(round(geometry.x0)), int(round(geometry.y0))
    w = int(round(anomaly_map.shape[1] * geometry.sx))
    h = int(round(anomaly_map.shape[0] * geometry.sy))
    level = np.clip(anomaly_map / threshold, 0.0, 1.0)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    roi = canvas[y0 : y0 + h, x0 : x0 + w]
    canvas[y0 : y0 + h, x0 : x0 + w] = cv2.addWeighted(
        roi, 0.6, heat[: roi.shape[0], : roi.shape[1]], 0.4, 0
    )


def overlay_of(inspection: Inspection) -> np.ndarray:
    """The part's overlay, drawn once for every sink that shows it (docs/performance.md,
    "Figures behind the code") and kept on the inspection."""
    if inspection.picture is None:
        inspection.picture = render(
            inspection.frame.image, inspection.record, inspection.anomaly_map, inspection.geometry
        )
    return inspection.picture


def to_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
