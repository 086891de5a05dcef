"""What the PLC servers show and do besides triggers: the product changeover (by name over OPC
UA, by number over Modbus, through the station's own product switch) and the station's state
(ready, product, health, counters), in one place for both servers."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from inspectd.plc.handshake import (
    NOT_READY,
    PRODUCT_FAILED,
    UNKNOWN_PRODUCT,
    Handshake,
    Refusal,
)
from inspectd.versions.layout import is_product

if TYPE_CHECKING:
    from inspectd.config import StationConfig
    from inspectd.pipeline import Pipeline
    from inspectd.service.control import ProductControl
    from inspectd.service.health import HealthMonitor

log = structlog.get_logger(__name__)

STATE_TTL_S = 0.2  # counters and health are looked up at most this often; PLCs poll every ms


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


class StationView(Protocol):
    """What the link reads of the station (``inspectd.service.station.Station``); ``pipeline``
    and ``health`` are None until the station has made them."""

    config: StationConfig
    control: ProductControl
    pipeline: Pipeline | None
    health: HealthMonitor | None


class PlcLink:
    """The station as its PLC servers see it, from before its engine loads: the product switch
    is the station's own (``control.switch``: raises on failure, the old product keeps running);
    health is the health monitor's last snapshot (at most a second old), never one computed
    here: that takes the outbox's lock, which a commit holds for its fsync, and the servers'
    loop must not wait for it; the product is the one the next part is judged with (a switch
    takes effect at the next part, so health's product lags until then)."""

    def __init__(self, handshake: Handshake, station: StationView) -> None:
        cfg = station.config
        self.handshake = handshake
        self.station = station
        self.deadline_ms = cfg.plc.result_deadline_ms
        self.products_dir = cfg.products_dir
        self.numbers = cfg.plc.products
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
        if self.handshake.starting_up:
            return Refusal(NOT_READY, "the station is starting")
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
        self.changed()
        threading.Thread(
            target=self._run_switch, args=(product,), name="plc-product", daemon=True
        ).start()
        return None

    def _run_switch(self, product: str) -> None:
        try:
            self.station.control.switch(product)
        except Exception as exc:  # CommandError, and anything else: the old product runs on
            log.warning("plc.product_refused", product=product, error=str(exc))
            self.set_changeover("refused", PRODUCT_FAILED, str(exc))
        else:
            log.info("plc.product_selected", product=product)
            self.set_changeover("ready", None, None)

    def set_changeover(self, state: str, code: str | None, text: str | None) -> None:
        with self._lock:
            self._changeover = (state, code, text)
        self.changed()

    def changed(self) -> None:
        """The state may have changed (a changeover, the station started): shown at once."""
        self._cached = None
        for listener in list(self.listeners):
            listener()

    # -- state ------------------------------------------------------------------------------

    def state(self) -> StationState:
        """Ready as a trigger would find it now; the rest as of at most STATE_TTL_S ago."""
        not_ready = self.handshake.not_ready()
        cached = self._cached
        now = time.monotonic()
        if cached is None or now - cached[0] >= STATE_TTL_S:
            cached = (now, self._facts())
            self._cached = cached
        return dataclasses.replace(cached[1], ready=not_ready is None, not_ready=not_ready)

    def _facts(self) -> StationState:
        pipeline, monitor = self.station.pipeline, self.station.health
        health = monitor.last if monitor is not None else {}
        since_start: dict[str, int] = {}
        last_hour: dict[str, Any] = {}
        product = self.station.config.product
        if pipeline is not None:
            since_start = dict(pipeline.stats.verdicts)
            last_hour = pipeline.stats.last_hour.snapshot()
            product = pipeline.next_bundle().name
        problems = tuple(health.get("problems", ()))
        with self._lock:
            changeover = self._changeover
        return StationState(
            ready=False,
            not_ready=None,
            product=product,
            product_number=self.number_of(product),
            changeover=changeover[0],
            changeover_code=changeover[1],
            changeover_text=changeover[2],
            health=health.get("state", "starting"),  # no snapshot yet: the station starts
            problems=problems,
            counts={k: since_start.get(k, 0) for k in ("OK", "NG", "ERROR")},
            last_hour={k: last_hour.get(k, 0) for k in ("OK", "NG", "ERROR")},
        )
