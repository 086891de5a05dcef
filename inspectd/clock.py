"""Time for ages and deadlines that a step of the wall clock must not move.

Ages (the outbox's ``max_age_s``) and deadlines (a reject's travel window) run on the monotonic
clock; messages still carry wall time. CLOCK_MONOTONIC is one clock for every process of a boot,
so a value stored by an earlier process of the same boot (same ``boot_id``) still counts. For
what was stored in an earlier boot only the wall clock is left: the age is taken from it,
clamped to at least the time since this boot (``mono()``: the row is older than the boot) and
never below 0 (a wall clock set back must not make it young again). A value without a boot id
(an outbox file older than these columns) gets the wall clock's age, never below 0.

Tests inject their own ``Clock`` (a wall clock that jumps) instead of touching the machine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str:
    """This boot's id (Linux); "" where there is none, so every stored value counts as from an
    earlier boot and falls back to the wall clock."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _wall() -> float:
    return time.time()  # looked up at each call: a test that shifts time.time shifts this too


def _mono() -> float:
    return time.monotonic()


@dataclass(frozen=True, slots=True)
class Clock:
    wall: Callable[[], float] = _wall  # for timestamps in messages and across boots
    mono: Callable[[], float] = _mono  # for ages and deadlines
    boot_id: str = field(default_factory=current_boot_id)


SYSTEM = Clock()
