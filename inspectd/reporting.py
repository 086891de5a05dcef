"""What a component tells the station's health: its counters and what is wrong with it now.

The station's health (``inspectd.service.health.StationHealth``) puts each component's ``stats()``
under its key of the health JSON and joins their ``problems()``; it does not look inside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Reporting(Protocol):
    def stats(self) -> Mapping[str, Any]:
        """Counters and state, JSON-ready; read from the health thread and /metrics scrapes."""
        ...

    def problems(self) -> list[str]:
        """What is wrong now, each ``"code: detail"`` (health's ``problems``); [] when well.
        Numbers in the detail may change without making the health message "changed"."""
        ...
