"""An engine made slower on purpose, for tests and benches of what happens past a deadline
(``INSPECTD_SLOW_ENGINE_MS``, read when the station loads an engine; logged loudly)."""

from __future__ import annotations

import os
import time

import numpy as np
import structlog

from inspectd.engine.base import Engine, InferenceResult

log = structlog.get_logger(__name__)

SLOW_ENGINE_ENV = "INSPECTD_SLOW_ENGINE_MS"


def slowed_if_asked(engine: Engine) -> Engine:
    """``engine``, slowed by ``INSPECTD_SLOW_ENGINE_MS`` where that is set (loudly)."""
    slow_ms = os.environ.get(SLOW_ENGINE_ENV)
    if not slow_ms:
        return engine
    log.warning("engine.slowed_on_purpose", env=SLOW_ENGINE_ENV, ms=float(slow_ms))
    return SlowedEngine(engine, float(slow_ms) / 1000.0)


class SlowedEngine(Engine):
    """``engine`` with ``delay_s`` of sleep before every batch."""

    def __init__(self, engine: Engine, delay_s: float) -> None:
        self.engine = engine
        self.delay_s = delay_s
        self.name = f"{engine.name}+{delay_s * 1000:g}ms"
        self.input_hw = engine.input_hw

    def infer(self, batch: np.ndarray) -> InferenceResult:
        time.sleep(self.delay_s)
        return self.engine.infer(batch)

    def warmup(self, runs: int = 3) -> None:
        # one delay, not one per run: a product switch takes that long (not_ready meanwhile)
        time.sleep(self.delay_s)
        self.engine.warmup(runs)

    def close(self) -> None:
        self.engine.close()
