"""What the PLC servers show and do besides triggers: the product changeover (by name over OPC
UA, by number over Modbus, through the station's own product switch) and the station's state
(ready, product, health, counters), in one place for both servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from inspectd.plc.handshake import (
    NOT_READY,
    PRODUCT_FAILED,
    UNKNOWN_PRODUCT,
    Handshake,
    Refusal,
)
from inspectd.versions.layout import is_product

log = structlog.get_logger(__name__)

STATE_TTL_S = 0.2  # the health snapshot is not free; PLCs poll every few ms


@dataclass(frozen=True, slots=True)
class StationState:
    """One look at the station, as the PLC servers show it."""

    ready: bool
    not_ready: str | None  # why not, when not ready
    product: str
    product_number: int  # 1-based in plc.products; 0 = not listed there
    changeover: str  # "ready", "switching" or "refused" (the last selection was refused)
    changeover_code: str | None
    changeover_text: str | None
    health: str  # "ok" or "degraded"
    problems: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)  # OK, NG, ERROR since start
    last_hour: dict[str, int] = field(default_factory=dict)


class PlcLink:
    """The station as its PLC servers see it. ``switch(name)`` is the station's product switch
    (raises on failure, the old product keeps running); ``health()`` its health snapshot;
    ``counts()`` (since start, last hour); ``product()`` the product the next part is judged
    with (a switch takes effect at the next part, so health's product lags until then)."""

    def __init__(
        self,
        handshake: Handshake,
        *,
        deadline_ms: float,
        products_dir: Path,
        numbers: tuple[str, ...],
        switch: Callable[[str], Any],
        health: Callable[[], dict[str, Any]],
        counts: Callable[[], tuple[dict[str, int], dict[str, int]]],
        product: Callable[[], str],
    ) -> None:
        self.handshake = handshake
        self.deadline_ms = deadline_ms
        self.products_dir = products_dir
        self.numbers = numbers
        self._switch, self._health, self._counts = switch, health, counts
        self._product = product
        self._lock = threading.Lock()
        self._changeover: tuple[str, str | None, str | None] = ("ready", None, None)
        self._cached: tuple[float, StationState] | None = None
        self.listeners: list[Callable[[], None]] = []  # told when the state may have changed

    # -- products ---------------------------------------------------------------------------

    def number_of(self, product: str) -> int:
        return self.numbers.index(product) + 1 if product in self.numbers else 0

    def name_of(self, number: int) -> str | None:
        return self.numbers[number - 1] if 1 <= number <= len(self.numbers) else None

    def select(self, product: str) -> Refusal | None:
        """Start switching to ``product`` (in a thread: loading an engine takes seconds), or a
        Refusal at once: an unknown product, or a switch already under way. The state says
        ``switching``, then ``ready`` with the new product, or ``refused`` with the code."""
        if (self.numbers and product not in self.numbers) or not is_product(
            self.products_dir / product
        ):
            refusal = Refusal(UNKNOWN_PRODUCT, f"no product {product!r} here")
            self.set_changeover("refused", refusal.code, refusal.text)
            return refusal
        with self._lock:
            if self._changeover[0] == "switching":
                return Refusal(NOT_READY, "a product switch is already under way")
            self._changeover = ("switching", None, None)
        self._changed()
        threading.Thread(
            target=self._run_switch, args=(product,), name="plc-product", daemon=True
        ).start()
        return None

    def _run_switch(self, product: str) -> None:
        try:
            self._switch(product)
        except Exception as exc:  # CommandError, and anything else: the old product runs on
            log.warning("plc.product_refused", product=product, error=str(exc))
            self.set_changeover("refused", PRODUCT_FAILED, str(exc))
        else:
            log.info("plc.product_selected", product=product)
            self.set_changeover("ready", None, None)

    def set_changeover(self, state: str, code: str | None, text: str | None) -> None:
        with self._lock:
            self._changeover = (state, code, text)
        self._changed()

    def _changed(self) -> None:
        self._cached = None
        for listener in list(self.listeners):
            listener()

    # -- state ------------------------------------------------------------------------------

    def state(self) -> StationState:
        cached = self._cached
        now = time.monotonic()
        if cached is not None and now - cached[0] < STATE_TTL_S:
            return cached[1]
        health = self._health()
        since_start, last_hour = self._counts()
        not_ready = self.handshake.not_ready()
        problems = tuple(health.get("problems", ()))
        offline = next((p for p in problems if p.startswith("camera_")), None)
        with self._lock:
            changeover = self._changeover
        product = self._product()
        state = StationState(
            ready=not_ready is None and offline is None,
            not_ready=not_ready or offline,
            product=product,
            product_number=self.number_of(product),
            changeover=changeover[0],
            changeover_code=changeover[1],
            changeover_text=changeover[2],
            health=health.get("state", "ok"),
            problems=problems,
            counts={k: since_start.get(k, 0) for k in ("OK", "NG", "ERROR")},
            last_hour={k: last_hour.get(k, 0) for k in ("OK", "NG", "ERROR")},
        )
        self._cached = (now, state)
        return state
