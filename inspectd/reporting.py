"""What a component tells the station's health: its counters and what is wrong with it now.

Components register with the station's health by name (``Reports.add``); health puts each one's
``stats()`` under its name in the health JSON and …/stats, and lists their ``problems()`` in the
fixed order its ``order`` gives (a component added later than another still sorts by its name).
Health does not look inside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Reporting(Protocol):
    def stats(self) -> Mapping[str, Any]:
        """Counters and state, JSON-ready; read from the health thread and /metrics scrapes."""
        ...

    def problems(self) -> list[str]:
        """What is wrong now, each ``"code: detail"`` (health's ``problems``); [] when well.
        Numbers in the detail may change without making the health message "changed"."""
        ...


class Reports:
    """The components by name. ``order``: the names whose problems come first, in that order;
    any other name follows in the order it was added."""

    def __init__(self, order: Sequence[str] = ()) -> None:
        self._order = {name: i for i, name in enumerate(order)}
        self._parts: dict[str, Reporting] = {}

    def add(self, name: str, part: Reporting | None) -> None:
        """Register ``part`` under ``name``; None (a component the config turns off) is not."""
        if name in self._parts:
            raise ValueError(f"a component already reports as {name!r}")
        if part is not None:
            self._parts[name] = part
            ranked = sorted(self._parts.items(), key=lambda kv: self._rank(kv[0]))
            self._parts = dict(ranked)

    def _rank(self, name: str) -> tuple[int, int]:
        return (0, self._order[name]) if name in self._order else (1, 0)

    def stats(self, name: str) -> dict[str, Any] | None:
        """``name``'s stats(), None when nothing reports under that name."""
        part = self._parts.get(name)
        return None if part is None else dict(part.stats())

    def problems(self, *names: str) -> list[str]:
        """Every component's problems in order, or only those of ``names``."""
        return [
            problem
            for name, part in self._parts.items()
            if not names or name in names
            for problem in part.problems()
        ]
