"""One part's inspection as the stages hand it on: ``Inspection`` (what every sink receives),
the ``VerdictSink`` protocol, the stage and thread names, and the pipeline's running statistics.

Its own module so that sinks, the archive, drift, metrics and trigger answers depend on these
types and not on the orchestrator (``inspectd.pipeline``), which produces them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from inspectd.contract.verdict import Verdict, VerdictRecord, iso_utc
from inspectd.frame import Frame
from inspectd.preprocess import Geometry

STAGES = ("capture", "preprocess", "infer", "decide", "publish")
THREADS = ("capture", "infer", "publish")  # capture also preprocesses; infer also decides
RECENT_PARTS = 10_000  # latency statistics cover this many recent parts
TRIGGER_EXPIRED = "trigger expired"  # how an expired request's ERROR verdict starts


@dataclass(slots=True)
class Inspection:
    """What sinks receive for one part."""

    record: VerdictRecord
    frame: Frame
    anomaly_map: np.ndarray | None = None  # model-input resolution
    geometry: Geometry | None = None
    # seconds per stage of this part (STAGES; only those it went through); "publish" is added
    # after the sinks ran, for the pipeline's observer
    times: dict[str, float] = field(default_factory=dict)
    # the overlay, once a sink drew it (``inspectd.outputs.overlay.overlay_of``)
    picture: np.ndarray | None = field(default=None, init=False, repr=False)


class VerdictSink(Protocol):
    def handle(self, inspection: Inspection) -> None: ...
    def close(self) -> None: ...


class LastHour:
    """Recorded verdicts of the last hour in one-minute buckets, and the newest seq counted
    (…/stats ``last_hour``): a page or gateway that connects mid-shift takes these and adds
    only the verdicts after that seq, instead of counting from the moment it connected.

    The buckets run on the monotonic clock: keyed by wall minutes, a forward step of the wall
    clock (NTP, an operator) dropped minutes still inside the hour. The wall clock only dates
    the window's start (``since``)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._clock, self._wall = clock, wall
        self._started = clock()
        self._lock = threading.Lock()  # the sink thread adds, the health thread reads
        self._minutes: deque[tuple[int, Counter[str]]] = deque()
        self._seq = 0

    def add(self, verdict: Verdict, seq: int) -> None:
        minute = int(self._clock() // 60)
        with self._lock:
            if not self._minutes or minute > self._minutes[-1][0]:
                self._minutes.append((minute, Counter()))
            self._minutes[-1][1][verdict.value] += 1
            self._seq = max(self._seq, seq)

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        first = int((now - 3600.0) // 60) + 1  # the 60 minutes up to and including this one
        counts: Counter[str] = Counter()
        with self._lock:
            while self._minutes and self._minutes[0][0] < first:
                self._minutes.popleft()
            for _, c in self._minutes:
                counts.update(c)
            seq = self._seq
        start = max(self._started, first * 60.0)
        return {
            **{v.value: counts[v.value] for v in Verdict},
            "since": iso_utc(self._wall() - (now - start)),
            "through_seq": seq,
        }


@dataclass
class PipelineStats:
    verdicts: Counter[str] = field(default_factory=Counter)  # since start, before recording
    last_hour: LastHour = field(default_factory=LastHour)  # as recorded (seq known)
    # the most recent parts only: a station runs for months
    stage_ms: dict[str, deque[float]] = field(
        default_factory=lambda: {s: _recent() for s in STAGES}
    )
    latency_ms: deque[float] = field(default_factory=lambda: _recent())  # capture -> decided
    sink_errors: int = 0
    frames: int = 0  # captured (or answered without a frame), for the camera's fps
    seconds: float = 0.0
    capture_failure: str | None = None  # the source broke (not one bad frame) and ended the run

    def percentiles(self, values: Iterable[float]) -> tuple[float, float]:
        values = list(values)
        if not values:
            return (float("nan"), float("nan"))
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _recent() -> deque[float]:
    return deque(maxlen=RECENT_PARTS)
