"""The one handshake core behind every way a part is triggered: MQTT's …/trigger, OPC UA and
Modbus (the adapters in inspectd/mqtt/triggers.py, inspectd/plc/opcua.py, inspectd/plc/modbus.py
only translate).

It owns the queue the pipeline's capture thread takes requests from, and answers every accepted
request exactly once:

- with its verdict, when the verdict is settled (about to be recorded) before the request's
  deadline; the answer goes out after the outbox commit, so it carries the seq;
- at the deadline, NG with code ``late``, when the model has not decided by then: fail safe, an
  uninspected part is rejected. The verdict that comes later is still recorded and published,
  with ``late: true``. Late or not is decided once, under one lock, by the monotonic clock at
  settle time: the timer thread only makes the late answer prompt;
- ``not_inspected`` when the station stops first.

A request that cannot be taken is refused at once (``Refusal``): nothing was queued, so nothing
can be lost. ``not_ready`` while the station starts (the PLC servers listen before the engine
loads), while a product switch loads, while the station stops, and while the camera is offline
(a part that was accepted before the camera went away is the camera's to answer: an ERROR
verdict, recorded); ``overloaded`` when the queue is full.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.contract.vocabulary import ErrorCode
from inspectd.frame import TriggerRequest
from inspectd.inspection import TRIGGER_EXPIRED, Inspection

if TYPE_CHECKING:
    from inspectd.pipeline import Recorder

log = structlog.get_logger(__name__)

DEFAULT_QUEUE = 256  # requests waiting for the camera

# Answer codes (docs/plc.md "Error codes"; Modbus carries their numbers). Those MQTT's …/error
# shares are the contract's words (inspectd.contract.vocabulary.ErrorCode).
LATE = "late"
NOT_READY = ErrorCode.NOT_READY
OVERLOADED = ErrorCode.OVERLOADED
NOT_INSPECTED = ErrorCode.NOT_INSPECTED
INVALID_PART_ID = "invalid_part_id"
UNKNOWN_PRODUCT = "unknown_product"
PRODUCT_FAILED = "product_failed"
# an ERROR verdict's reason, by the prefix of its error text
CAMERA_OFFLINE = "camera_offline"
FRAME_TIMEOUT = "frame_timeout"
ENGINE_ERROR = "engine_error"
BAD_FRAME = "bad_frame"
NOT_RECORDED = "not_recorded"
CODES = (
    LATE,
    NOT_READY,
    OVERLOADED,
    NOT_INSPECTED,
    INVALID_PART_ID,
    UNKNOWN_PRODUCT,
    PRODUCT_FAILED,
    CAMERA_OFFLINE,
    FRAME_TIMEOUT,
    ENGINE_ERROR,
    BAD_FRAME,
    NOT_RECORDED,
)
_ERROR_PREFIXES = (
    ("camera_offline", CAMERA_OFFLINE),
    ("frame_timeout", FRAME_TIMEOUT),
    (TRIGGER_EXPIRED, LATE),
    ("engine error", ENGINE_ERROR),
    ("seq_unavailable", NOT_RECORDED),
)


def error_code(record: VerdictRecord) -> str | None:
    """The code of a recorded verdict: None for OK and NG, else what made it ERROR (a frame that
    could not be decoded or prepared is ``bad_frame``)."""
    if record.verdict != Verdict.ERROR:
        return None
    text = record.error or ""
    for prefix, code in _ERROR_PREFIXES:
        if text.startswith(prefix):
            return code
    return BAD_FRAME


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request not taken; nothing was queued for it."""

    code: str
    text: str


@dataclass(frozen=True, slots=True)
class Result:
    """A request's one answer. ``record`` is the recorded verdict (with its seq); None for a
    late answer and for ``not_inspected``."""

    request_id: str
    part_id: str
    status: str  # "done", "late", "not_inspected"; "refused" for what an adapter refused itself
    verdict: Verdict
    code: str | None
    text: str | None
    record: VerdictRecord | None = None

    @property
    def seq(self) -> int:
        return self.record.seq if self.record is not None else 0

    @property
    def score(self) -> float | None:
        return self.record.score if self.record is not None else None

    @property
    def threshold(self) -> float | None:
        return self.record.threshold if self.record is not None else None


Answer = Callable[[Result], None]


@dataclass(slots=True)
class _Pending:
    request: TriggerRequest
    answer: Answer
    answered: bool = False  # the one answer went out (or is going out)
    settled: bool = False  # the verdict was decided in time; the deadline no longer applies
    late: bool = False


@dataclass
class Counts:
    requests: int = 0
    late: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class Handshake:
    """See the module docstring. Thread-safe: adapters submit from their own threads (paho's,
    the PLC servers' event loop), the pipeline settles and hands verdicts on from its publish
    thread, the deadline thread answers late."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE, starting: str | None = None) -> None:
        """``starting``: what the station is doing before it can take triggers (``started``
        ends it); None takes triggers at once."""
        self.queue: queue.Queue[TriggerRequest] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, int, str]] = []  # heap: (deadline, tie, request_id)
        self._tie = itertools.count()
        self._switching: str | None = None  # the product being switched to
        self._starting = starting
        self._offline: Callable[[], str | None] = _never  # the camera's, once it is open
        self._closed = False
        self.counts = Counts()
        self._thread = threading.Thread(
            target=self._run_deadlines, name="handshake-deadlines", daemon=True
        )
        self._thread.start()

    def threads(self) -> dict[str, threading.Thread | None]:
        return {"handshake-deadlines": self._thread if not self._closed else None}

    # -- readiness --------------------------------------------------------------------------

    def not_ready(self) -> str | None:
        """Why a trigger would be refused now, or None. Cheap: called for every trigger and
        every PLC read of Ready."""
        if self._closed:
            return "the station is stopping"
        if self._starting is not None:
            return f"the station is starting: {self._starting}"
        if self._switching is not None:
            return f"product switching to {self._switching}"
        return self._offline()

    def set_starting(self, step: str) -> None:
        """What the starting station does now (the not_ready reason a PLC reads)."""
        self._starting = step

    @property
    def starting_up(self) -> bool:
        return self._starting is not None

    def started(self, offline: Callable[[], str | None]) -> None:
        """Triggers are taken from now on, but while ``offline()`` gives why the camera cannot
        take a part (``CaptureSource.offline``)."""
        with self._lock:
            self._offline, self._starting = offline, None

    @contextmanager
    def changeover(self, product: str) -> Iterator[None]:
        """Triggers are refused ``not_ready`` while a product switch loads its bundle and
        engine; the next part after it is judged with the new product."""
        with self._lock:
            self._switching = product
        try:
            yield
        finally:
            with self._lock:
                self._switching = None

    @property
    def switching(self) -> str | None:
        return self._switching

    # -- requests ---------------------------------------------------------------------------

    def submit(
        self, request_id: str, part_id: str, deadline_mono: float | None, answer: Answer
    ) -> Refusal | None:
        """Queue one inspection; ``answer`` is called exactly once later (from another
        thread). A Refusal instead when it cannot be taken (``answer`` is never called)."""
        request = TriggerRequest(request_id, part_id, deadline_mono)
        with self._lock:
            reason = self.not_ready()
            if reason is not None:
                return self._refused(NOT_READY, reason)
            if request_id in self._pending:
                return self._refused(
                    "duplicate", f"request {request_id} is already being inspected"
                )
            self._pending[request_id] = _Pending(request, answer)
            try:
                self.queue.put_nowait(request)
            except queue.Full:
                del self._pending[request_id]
                return self._refused(
                    OVERLOADED, f"{self.queue.maxsize} requests already wait for the camera"
                )
            self.counts.requests += 1
            if deadline_mono is not None:
                heapq.heappush(self._deadlines, (deadline_mono, next(self._tie), request_id))
                self._wake.notify()
        return None

    def _refused(self, code: str, text: str) -> Refusal:
        self.counts.refused[code] = self.counts.refused.get(code, 0) + 1
        return Refusal(code, text)

    # -- the deadline thread ----------------------------------------------------------------

    def _run_deadlines(self) -> None:
        while True:
            due: list[_Pending] = []
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, _, request_id = heapq.heappop(self._deadlines)
                    p = self._pending.get(request_id)
                    if p is not None and not p.answered and not p.settled:
                        p.answered = p.late = True
                        self.counts.late += 1
                        due.append(p)
                if not due:
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._wake.wait(wait)
                    continue
            for p in due:
                self._deliver(p, _late(p.request))

    # -- the pipeline's publish thread ------------------------------------------------------

    def settle(self, records: Sequence[VerdictRecord]) -> None:
        """Before the outbox commit: each triggered record is in time or late, for good. A late
        one gets ``late = True`` (on the wire), and its late answer now if the deadline thread
        has not sent it yet."""
        due: list[_Pending] = []
        now = time.monotonic()
        with self._lock:
            for record in records:
                p = self._pending.get(record.request_id) if record.request_id else None
                if p is None:
                    continue
                deadline = p.request.deadline_mono
                if not p.answered and (deadline is None or now < deadline):
                    p.settled = True
                elif not p.answered:
                    p.answered = p.late = True
                    self.counts.late += 1
                    due.append(p)
                record.late = p.late
        for p in due:
            self._deliver(p, _late(p.request))

    def handle(self, inspection: Inspection) -> None:
        """The sink, after the verdict was recorded: the answer of a request decided in time."""
        record = inspection.record
        if record.request_id is None:
            return
        with self._lock:
            p = self._pending.pop(record.request_id, None)
            if p is None or p.answered:
                return
            p.answered = True
        code = error_code(record)
        self._deliver(
            p,
            Result(
                record.request_id,
                record.part_id,
                "done",
                record.verdict,
                code,
                record.error,
                record,
            ),
        )

    def close(self) -> None:
        """At stop: requests never inspected are answered ``not_inspected``."""
        with self._lock:
            self._closed = True
            self._wake.notify()
            left = [p for p in self._pending.values() if not p.answered]
            for p in left:
                p.answered = True
            self._pending.clear()
        for p in left:
            r = p.request
            self._deliver(
                p,
                Result(
                    r.request_id,
                    r.part_id,
                    "not_inspected",
                    Verdict.ERROR,
                    NOT_INSPECTED,
                    "the station stopped before this part was inspected",
                ),
            )
        self._thread.join(timeout=2.0)

    def _deliver(self, p: _Pending, result: Result) -> None:
        try:
            p.answer(result)
        except Exception:  # one adapter's bug must not cost the other requests their answers
            log.exception("handshake.answer_failed", request_id=result.request_id)

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": self.counts.requests,
                "late": self.counts.late,
                "refused": dict(self.counts.refused),
                "pending": len(self._pending),
                "queued": self.queue.qsize(),
                "queue_max": self.queue.maxsize,
                "switching": self._switching,
            }


def _never() -> str | None:
    return None


def _late(request: TriggerRequest) -> Result:
    return Result(
        request.request_id,
        request.part_id,
        "late",
        Verdict.NG,
        LATE,
        "no verdict by the deadline; rejected unseen (fail safe), the verdict follows on MQTT",
    )


class SettlingRecorder:
    """The pipeline's recorder with the handshake's settle step in front (``Pipeline`` calls
    ``record`` on its publish thread, before any sink)."""

    def __init__(self, handshake: Handshake, recorder: Recorder) -> None:
        self.handshake = handshake
        self.recorder = recorder

    def record(self, records: Sequence[VerdictRecord], receipts: Sequence[str | None] = ()) -> None:
        self.handshake.settle(records)
        if receipts:
            self.recorder.record(records, receipts=receipts)
        else:
            self.recorder.record(records)
