"""Drift: are today's good parts still the good parts calibration saw?

A rolling window of OK scores is compared with the score quantiles calibration recorded
(thresholds.yaml ``quantiles``: p10, p50, p90). Under no drift, the number of window scores
above calibration's q-quantile is Binomial(w, 1 - q), exactly, whatever the score distribution;
drift is raised when any count falls outside its two-sided band at ``alpha`` (split over the
checks). This quantile band was chosen over a two-sample test (Kolmogorov-Smirnov) because it
needs only the few numbers thresholds.yaml already carries, not calibration's scores, its false
alarm rate is exact for any window size, and its message is one an operator can read: "71 % of
recent good parts score above calibration's median (expected 50 %)". Scores of NG parts are
left out on purpose: they are the defects, not the drift.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from inspectd.contract.verdict import Verdict
from inspectd.inspection import Inspection
from inspectd.threshold_stats import binom_cdf

CHECKS = {"p10": 0.1, "p50": 0.5, "p90": 0.9}  # the quantiles compared, where recorded


class DriftMonitor:
    """A VerdictSink: fed by the pipeline's sink thread, read by the health thread."""

    def __init__(
        self, reference: dict[str, float], *, window: int, min_parts: int, alpha: float
    ) -> None:
        self.window, self.min_parts, self.alpha = window, min_parts, alpha
        self._lock = threading.Lock()
        self._scores: deque[float] = deque(maxlen=window)
        self._reference = {k: reference[k] for k in CHECKS if k in reference}

    def reset(self, reference: dict[str, float]) -> None:
        """New thresholds or product: start a new window against the new reference."""
        with self._lock:
            self._scores.clear()
            self._reference = {k: reference[k] for k in CHECKS if k in reference}

    def handle(self, inspection: Inspection) -> None:
        record = inspection.record
        if record.verdict is Verdict.OK and record.score is not None:
            with self._lock:
                self._scores.append(record.score)

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        """health's ``drift``: ``state`` (off, warming_up, ok, drift) and the checks."""
        return self.state()

    def problems(self) -> list[str]:
        return [f"drift: {p}" for p in self.state().get("problems", [])]

    def state(self) -> dict[str, Any]:
        with self._lock:
            scores, reference = list(self._scores), dict(self._reference)
        n = len(scores)
        out: dict[str, Any] = {"method": "quantile band", "window": n, "alpha": self.alpha}
        if not reference:
            return {**out, "state": "off", "why": "thresholds.yaml records no score quantiles"}
        if n < self.min_parts:
            return {**out, "state": "warming_up", "needs": self.min_parts}
        tail = self.alpha / (2 * len(reference))  # two-sided, split over the checks
        checks, drifted = {}, []
        for name, level in reference.items():
            expected = 1.0 - CHECKS[name]
            above = sum(s > level for s in scores)
            low = binom_cdf(above, n, expected)  # P(this few or fewer)
            high = 1.0 - binom_cdf(above - 1, n, expected)  # P(this many or more)
            checks[name] = {"expected": round(expected, 3), "observed": round(above / n, 3)}
            if min(low, high) < tail:
                drifted.append(
                    f"{above / n:.0%} of the last {n} OK parts score above calibration's {name} "
                    f"{level:.4g} (expected {expected:.0%})"
                )
        return {**out, "state": "drift" if drifted else "ok", "checks": checks, "problems": drifted}
