"""One archived part, as the line page's part view shows it (``…/cmd/part/set``).

The station answers because it holds the archive: the verdict as it went out, the frame, the
anomaly map and where the map lies on the frame, and the part's review if it has one. The frame
travels as the archived PNG (a JPEG when that is too large for one MQTT answer); the map as an
8-bit PNG over [0, 2 x the part's image threshold], so the page colours it against the threshold
the part was judged with: a good part's map stays below red however the maps of other parts
look.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspectd.mqtt.commands import CommandError
from inspectd.outputs.archive import find_entry
from inspectd.reviews import review_of

MAX_FRAME_BYTES = 6 << 20  # a frame above this goes as a JPEG (5 MP PNGs run to 10 MB)
MAP_TOP = 2.0  # the map's 8 bits span [0, MAP_TOP x image threshold]


def part_view(root: Path | None, args: dict[str, Any]) -> dict[str, Any]:
    """``{"seq"?, "part_id"?}`` -> the archived part: verdict, frame, map, geometry, review.
    ``root``: the station's archive folder, None when it keeps none."""
    if root is None:
        raise CommandError("this station keeps no archive (archive.enabled: false)")
    unknown = set(args) - {"seq", "part_id"}
    if unknown:
        raise CommandError(f"unknown part fields {sorted(unknown)}; allowed: part_id, seq")
    seq, part_id = args.get("seq"), args.get("part_id")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
        raise CommandError(f"seq: {seq!r} is not a verdict's seq (an integer >= 1)")
    if part_id is not None and (not isinstance(part_id, str) or not 0 < len(part_id) <= 256):
        raise CommandError("part_id: expected the part's id (a non-empty string)")
    if seq is None and part_id is None:
        raise CommandError("give seq, part_id or both")
    try:
        found = find_entry(root, seq, part_id)
    except OSError as exc:
        raise CommandError(f"cannot read the archive {root}: {exc}") from exc
    if found is None:
        what = " and ".join(
            x for x in (f"seq {seq}" if seq else "", f"part {part_id}" if part_id else "") if x
        )
        raise CommandError(
            f"{what} is not in the archive (not archived: archive.ok_every keeps OK parts only "
            "now and then; or dropped by archive.max_bytes)"
        )
    entry, doc = found
    verdict = doc["verdict"]
    out: dict[str, Any] = {
        "verdict": verdict,
        "archived": doc.get("archived"),
        "source": doc.get("source"),
        "geometry": doc.get("geometry"),
        "frame": None,
        "map": None,
        "review": review_of(root, entry.stem),
    }
    if doc.get("frame"):
        out["frame"] = _frame(entry.folder / doc["frame"])
    threshold = verdict.get("threshold")
    if doc.get("map") and isinstance(threshold, (int, float)) and threshold > 0:
        out["map"] = _map(entry.folder / doc["map"], float(threshold))
    return out


def _frame(path: Path) -> dict[str, Any] | None:
    if path.suffix == ".png":
        data = path.read_bytes()
        if len(data) <= MAX_FRAME_BYTES:
            return {"type": "image/png", "data": base64.b64encode(data).decode("ascii")}
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    else:  # .frame.npy: what PNG cannot hold (float, many channels)
        image = np.load(path, allow_pickle=False)
    if image is None:
        return None
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        return None
    return {"type": "image/jpeg", "data": base64.b64encode(buf.tobytes()).decode("ascii")}


def _map(path: Path, threshold: float) -> dict[str, Any] | None:
    amap = np.load(path, allow_pickle=False)
    if amap.ndim != 2:
        return None
    level = np.clip(amap / (MAP_TOP * threshold), 0.0, 1.0)
    ok, buf = cv2.imencode(".png", np.round(level * 255).astype(np.uint8))
    if not ok:
        return None
    return {
        "type": "image/png",
        "data": base64.b64encode(buf.tobytes()).decode("ascii"),
        "top": MAP_TOP * threshold,  # the value of 255
        "max": float(amap.max()),
    }
