"""The bit-level vision handshake, for PLCs that poll and set bits (Modbus coils, OPC UA
variables) rather than call methods. One implementation for both servers; each server only maps
it onto its registers or nodes.

    PLC: PartId := "..."; Trigger := 1        station: TriggerAck := 1, Busy while inspecting
    PLC: Trigger := 0                         station: TriggerAck := 0
    station: result fields, then ResultValid := 1 (by the deadline at the latest: late = NG)
    PLC: reads them; ResultAck := 1           station: ResultValid := 0
    PLC: ResultAck := 0                       station: the next waiting result, if any

Triggers may follow each other before their results (the pipeline overlaps parts); results are
shown one at a time, in the order they were answered, each until it is acknowledged, so none is
lost when the PLC is slow or its connection drops between trigger and acknowledge. A trigger the
station cannot take is answered at once: ERROR with the code (not_ready, overloaded,
invalid_part_id), through the same result fields.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from inspectd.contract.verdict import Verdict
from inspectd.mqtt.inbound import id_problem
from inspectd.plc.handshake import INVALID_PART_ID, OVERLOADED, Result
from inspectd.plc.link import PlcLink

MAX_WAITING = 256  # results waiting for ResultAck before triggers are refused (overloaded)


class Snapshot(NamedTuple):
    shown: Result | None
    result_valid: bool
    trigger_ack: bool
    busy: bool
    trigger: bool
    ack: bool
    answered: int


class BitHandshake:
    """One server's handshake state (all its clients share it, as a camera's I/O block is one).
    Called from the server's thread; answers arrive from the core's threads; ``listeners`` are
    told after every change (OPC UA pushes values, Modbus reads them on demand)."""

    def __init__(self, link: PlcLink, source: str, *, max_part_chars: int) -> None:
        self.link = link
        self.source = source
        self.max_part_chars = max_part_chars
        self.listeners: list[Callable[[], None]] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._boot = f"{time.monotonic_ns():x}"[-6:]  # request ids differ from a previous run's
        self.part_id = ""
        self._trigger = False
        self._ack = False
        self.trigger_ack = False
        self.in_flight = 0
        self._waiting: deque[Result] = deque()
        self.shown: Result | None = None  # the result in the fields (kept after its ack)
        self.result_valid = False
        self.answered = 0  # results shown so far

    # -- what the PLC writes ---------------------------------------------------------------

    def write_part_id(self, text: str) -> None:
        with self._lock:
            self.part_id = text

    def write_trigger(self, value: bool) -> None:
        with self._lock:
            rising = value and not self._trigger
            self._trigger = value
            if not value:
                self.trigger_ack = False
            if rising:
                self._triggered()
        self._changed()

    def write_ack(self, value: bool) -> None:
        with self._lock:
            rising, falling = value and not self._ack, self._ack and not value
            self._ack = value
            if rising:
                self.result_valid = False
            if falling:
                self._show_next()
        self._changed()

    def snapshot(self) -> Snapshot:
        """The handshake's outputs as one consistent whole: a result answered meanwhile never
        shows ResultValid with the previous result's fields."""
        with self._lock:
            return Snapshot(
                self.shown,
                self.result_valid,
                self.trigger_ack,
                self.in_flight > 0,
                self._trigger,
                self._ack,
                self.answered,
            )

    @property
    def trigger(self) -> bool:
        return self._trigger

    @property
    def ack(self) -> bool:
        return self._ack

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    # -- inside -----------------------------------------------------------------------------

    def _triggered(self) -> None:
        part_id = self.part_id
        self.trigger_ack = True
        problem = id_problem("PartId", part_id)
        if problem is None and len(part_id) > self.max_part_chars:
            problem = f"PartId has {len(part_id)} characters, at most {self.max_part_chars}"
        request_id = f"{self.source}-{self._boot}-{next(self._ids)}"
        if problem is not None:
            self._enqueue(
                Result(request_id, part_id, "refused", Verdict.ERROR, INVALID_PART_ID, problem)
            )
            return
        if len(self._waiting) >= MAX_WAITING:
            text = f"{MAX_WAITING} results wait for ResultAck"
            self._enqueue(Result(request_id, part_id, "refused", Verdict.ERROR, OVERLOADED, text))
            return
        deadline = time.monotonic() + self.link.deadline_ms / 1000.0
        self.in_flight += 1
        refusal = self.link.handshake.submit(request_id, part_id, deadline, self._answered)
        if refusal is not None:
            self.in_flight -= 1
            self._enqueue(
                Result(request_id, part_id, "refused", Verdict.ERROR, refusal.code, refusal.text)
            )

    def _answered(self, result: Result) -> None:
        with self._lock:
            self.in_flight -= 1
            self._enqueue(result)
        self._changed()

    def _enqueue(self, result: Result) -> None:
        self._waiting.append(result)
        if not self.result_valid and not self._ack:
            self._show_next()

    def _show_next(self) -> None:
        if self._waiting and not self.result_valid:
            self.shown = self._waiting.popleft()
            self.result_valid = True
            self.answered += 1

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()
