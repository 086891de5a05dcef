"""The drift check: a steady line stays quiet, a moved score distribution is named."""

from __future__ import annotations

import numpy as np

from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.drift import DriftMonitor
from inspectd.inspection import Inspection

QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}  # of uniform(0, 1) scores


def feed(monitor: DriftMonitor, scores, verdict: Verdict = Verdict.OK) -> None:
    for s in scores:
        record = VerdictRecord(
            station="s",
            product="p",
            part_id="x",
            verdict=verdict,
            score=float(s),
            threshold=1.0,
            model_name="m",
            model_sha256="0",
            model_version=1,
            camera_serial="",
            frame_id=0,
            t_capture=0.0,
            t_verdict=0.0,
            latency_ms=0.0,
        )
        monitor.handle(Inspection(record=record, frame=None))  # type: ignore[arg-type]


def test_a_steady_line_rarely_raises_drift():
    rng = np.random.default_rng(0)
    alarms = 0
    for _ in range(300):
        monitor = DriftMonitor(QUANTILES, window=500, min_parts=100, alpha=0.001)
        feed(monitor, rng.uniform(size=500))
        alarms += monitor.state()["state"] == "drift"
    assert alarms <= 3  # 0.3 expected at alpha 0.001


def test_moved_scores_raise_drift_with_a_readable_reason_and_ng_parts_do_not_count():
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(QUANTILES, window=500, min_parts=100, alpha=0.001)
    feed(monitor, rng.uniform(size=60))
    assert monitor.state()["state"] == "warming_up"
    feed(monitor, rng.uniform(0.9, 5.0, size=400), Verdict.NG)  # defects are not drift
    feed(monitor, rng.uniform(size=60))
    state = monitor.state()
    assert state["state"] == "ok" and state["window"] == 120

    feed(monitor, rng.uniform(0.2, 1.0, size=500))  # every good part scores higher
    state = monitor.state()
    assert state["state"] == "drift"
    assert any("above calibration's p50 0.5 (expected 50%)" in p for p in state["problems"])
    assert state["checks"]["p10"]["observed"] == 1.0

    monitor.reset(QUANTILES)  # new thresholds: a new window
    assert monitor.state()["state"] == "warming_up"
    monitor.reset({"max": 1.0})
    feed(monitor, rng.uniform(size=200))
    assert monitor.state()["state"] == "off"  # nothing to compare with
