"""The shared-memory ring between a camera child process and its parent: header layout and
slot states.

The header segment holds, in this order: the child's heartbeat (float64, ``time.monotonic()``,
system-wide on Linux), the dropped-frame count, the number of the current ring, then one state
and one sequence number per slot (int64 each). Frames themselves live in a separate ring
segment (``ring_name``) of ``slots`` equal slots; the child makes a new, bigger one when a
frame does not fit.

A slot goes FREE -> WRITING (the child copies a frame in) -> READY (the pipe names it) ->
READING (the parent copies it out) -> FREE. A live camera may take a READY slot back to
WRITING (the oldest unread frame, counted as dropped). Every state change happens under the
ring lock; ``Header`` works on any buffer, so the transitions are testable without processes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import numpy as np


class SlotState(IntEnum):
    FREE = 0
    READY = 1  # a frame the parent has not read yet
    READING = 2  # the parent is copying it out
    WRITING = 3  # the child is copying a frame in


_DROPPED, _RING = 0, 1  # indexes into the header's int64 fields


def header_size(slots: int) -> int:
    return 8 + 8 * (2 + 2 * slots)


def ring_name(header_name: str, number: int) -> str:
    return f"{header_name}_r{number}"


def slot_size(nbytes: int) -> int:
    """Bytes per slot for a frame of ``nbytes``: 4 KiB aligned and a quarter bigger, so a
    slightly bigger frame later needs no new ring."""
    return -(-int(nbytes * 1.25) // 4096) * 4096


class Header:
    """Views on the header segment (``buf``) and the slot transitions, each under ``lock``."""

    # lock: a multiprocessing.Lock shared with the child (a threading.Lock in tests)
    def __init__(self, buf: Any, slots: int, lock: Any) -> None:
        self.slots = slots
        self.lock = lock
        self._hb: np.ndarray | None = np.ndarray((1,), np.float64, buf, 0)
        self._ints: np.ndarray | None = np.ndarray((2 + 2 * slots,), np.int64, buf, 8)

    @property
    def closed(self) -> bool:
        return self._ints is None

    def release(self) -> None:
        """Drop the views, so the segment can be unmapped."""
        self._hb = self._ints = None

    def _fields(self) -> np.ndarray:
        if self._ints is None:
            raise ValueError("the ring header is closed")
        return self._ints

    @property
    def states(self) -> np.ndarray:
        return self._fields()[2 : 2 + self.slots]

    @property
    def seqs(self) -> np.ndarray:
        return self._fields()[2 + self.slots :]

    @property
    def heartbeat(self) -> float:
        if self._hb is None:
            raise ValueError("the ring header is closed")
        return float(self._hb[0])

    def beat(self, now: float) -> None:
        if self._hb is None:
            raise ValueError("the ring header is closed")
        self._hb[0] = now

    @property
    def dropped(self) -> int:
        return int(self._fields()[_DROPPED])

    @property
    def ring_number(self) -> int:
        return int(self._fields()[_RING])

    def reset(self, now: float) -> None:
        """A fresh header: no ring yet, nothing dropped, every slot free."""
        self._fields()[:] = 0
        self.beat(now)

    # -- the child's side ---------------------------------------------------------------------

    def switch_ring(self, number: int) -> None:
        """Ring ``number`` replaces the current one: its unread frames count as dropped."""
        with self.lock:
            ints = self._fields()
            ints[_DROPPED] += int(np.count_nonzero(self.states == SlotState.READY))
            ints[_RING] = number
            self.states[:] = SlotState.FREE

    def has_unread(self) -> bool:
        """A frame is READY or being read (a replay waits for that before a ring switch)."""
        with self.lock:
            states = self.states
            return bool(np.any((states == SlotState.READY) | (states == SlotState.READING)))

    def claim(self, live: bool) -> int | None:
        """A slot to write the next frame into (now WRITING): a free one, or for a ``live``
        camera the oldest unread one (counted as dropped). None when there is none (a replay
        then waits for the parent to take a frame)."""
        with self.lock:
            states, seqs = self.states, self.seqs
            free = np.flatnonzero(states == SlotState.FREE)
            if free.size:
                slot = int(free[0])
                states[slot] = SlotState.WRITING
                return slot
            if live:
                ready = np.flatnonzero(states == SlotState.READY)
                if ready.size:
                    slot = int(ready[np.argmin(seqs[ready])])
                    states[slot] = SlotState.WRITING
                    self._fields()[_DROPPED] += 1
                    return slot
        return None

    def fill(self, slot: int, seq: int) -> None:
        """The frame numbered ``seq`` is in ``slot``: READY for the parent."""
        with self.lock:
            self.seqs[slot] = seq
            self.states[slot] = SlotState.READY

    # -- the parent's side --------------------------------------------------------------------

    def begin_read(self, ring: int, slot: int, seq: int, lock_timeout: float) -> bool:
        """Take ``slot`` for reading if it still holds frame ``seq`` of ring ``ring``. False
        when it was overwritten or replaced, or the lock was not had within ``lock_timeout``
        (a stopped child may hold it)."""
        if self.closed or not self.lock.acquire(timeout=lock_timeout):
            return False
        try:
            if (
                self.ring_number != ring
                or self.seqs[slot] != seq
                or self.states[slot] != SlotState.READY
            ):
                return False
            self.states[slot] = SlotState.READING
            return True
        finally:
            self.lock.release()

    def end_read(self, ring: int, slot: int, lock_timeout: float) -> None:
        """``slot`` is copied out: FREE again, unless the ring was replaced meanwhile."""
        if self.lock.acquire(timeout=lock_timeout):
            try:
                if self.ring_number == ring:
                    self.states[slot] = SlotState.FREE
            finally:
                self.lock.release()
