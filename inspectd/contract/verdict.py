"""Verdicts and the v1 payload published on …/verdict (design.md, MQTT contract)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from inspectd.names import escape_name

VERDICT_SCHEMA = "inspectd.verdict/1"


class Verdict(enum.StrEnum):
    OK = "OK"
    NG = "NG"
    ERROR = "ERROR"  # the part could not be inspected; a PLC treats it as reject


@dataclass(frozen=True, slots=True)
class Region:
    """A connected defect region, in the pixel coordinates of the captured frame."""

    x: int
    y: int
    w: int
    h: int
    area: int  # pixels of the frame covered by the region
    peak: float  # highest anomaly value inside it


_TEXT_FIELDS = (
    "station",
    "product",
    "part_id",
    "request_id",
    "model_name",
    "model_sha256",
    "camera_serial",
    "error",
)


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class VerdictRecord:
    """Everything published about one part. `seq` is given when the record is sequenced."""

    station: str
    product: str
    part_id: str
    verdict: Verdict
    score: float | None
    threshold: float | None
    model_name: str
    model_sha256: str
    model_version: int  # the product's bundle version that judged it (1: the bundle as built)
    camera_serial: str
    frame_id: int
    t_capture: float
    t_verdict: float
    latency_ms: float
    regions: list[Region] = field(default_factory=list)
    request_id: str | None = None
    error: str | None = None
    seq: int = 0
    replayed: bool = False  # set on the wire by the outbox for verdicts an earlier run left
    durable: bool = True  # set on the wire by the outbox when the disk could not store it
    deadline_ts: float | None = None  # wall time the trigger's answer was due, if it set one
    # decided after the trigger's deadline: the requester was answered NG "late" without it
    late: bool = False
    # Monotonic twins of t_verdict and deadline_ts: reject expiry runs on them, so a step of the
    # wall clock neither expires a reject early nor stretches its MQTT message expiry.
    t_mono: float | None = None
    deadline_mono: float | None = None

    def escape_text(self) -> list[str]:
        """Escape (``inspectd.names.escape_name``) every text field that UTF-8 cannot encode (a
        lone surrogate, e.g. a trigger's ``"\\udcff"``); returns the names of those fields."""
        changed = []
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and not _encodable(value):
                setattr(self, name, escape_name(value))
                changed.append(name)
        return changed

    def to_payload(self) -> dict[str, Any]:
        return {
            "schema": VERDICT_SCHEMA,
            "seq": self.seq,
            "station": self.station,
            "product": self.product,
            "part_id": self.part_id,
            "request_id": self.request_id,
            "verdict": self.verdict.value,
            "score": self.score,
            "threshold": self.threshold,
            "regions": [asdict(r) for r in self.regions],
            "model": {
                "name": self.model_name,
                "sha256": self.model_sha256,
                "version": self.model_version,
            },
            "camera": {"serial": self.camera_serial, "frame_id": self.frame_id},
            "t_capture": iso_utc(self.t_capture),
            "t_verdict": iso_utc(self.t_verdict),
            "latency_ms": round(self.latency_ms, 3),
            "replayed": self.replayed,
            "durable": self.durable,
            "late": self.late,
            "error": self.error,
        }
