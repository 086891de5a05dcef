"""The station's health: …/health (retained, on every change and every interval), …/stats
(periodic, QoS 0), and ``state_dir/health.json`` for whoever cannot reach the broker (a broker
that refuses our password is exactly when an operator needs to read why)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from inspectd.messages import encode_json, health_message, stats_message
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.mqtt.topics import Topics
from inspectd.verdict import iso_utc

log = structlog.get_logger(__name__)

# What makes a health message "changed": fps, depths and drop counts move all the time, so
# problems are compared without their numbers.
_KEYS = ("state", "product", "model_sha256")
_NUMBERS = re.compile(r"\d+(\.\d+)?")


class HealthMonitor:
    def __init__(
        self,
        *,
        snapshot: Callable[[], dict[str, Any]],
        stats: Callable[[], dict[str, Any]],
        publisher: MqttPublisher | None,
        topics: Topics,
        path: Path,
        interval_s: float,
        stats_interval_s: float,
        tick_s: float = 1.0,
    ) -> None:
        self.snapshot, self.stats = snapshot, stats
        self.publisher, self.topics, self.path = publisher, topics, path
        self.interval_s, self.stats_interval_s, self.tick_s = interval_s, stats_interval_s, tick_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._last_key: tuple[Any, ...] | None = None
        self._was_connected = False
        self.last: dict[str, Any] = {}

    def start(self) -> None:
        self.check(force=True)
        self._thread.start()

    def check(self, *, force: bool = False) -> dict[str, Any]:
        """Take a snapshot; publish and write it when it changed (or ``force``)."""
        # connected first: a snapshot taken before the connection came up must not go out
        connected = self.publisher is not None and self.publisher.connected
        health = {**self.snapshot(), "ts": iso_utc(time.time())}
        key = (
            *(json.dumps(health.get(k), sort_keys=True) for k in _KEYS),
            tuple(_NUMBERS.sub("#", p) for p in health.get("problems", [])),
        )
        if not self._was_connected and connected:
            force = True  # a new connection gets the current health, not the last one sent
        self._was_connected = connected
        if force or key != self._last_key:
            if self._last_key is not None and key != self._last_key:
                (log.warning if health["state"] != "ok" else log.info)(
                    "health.changed", state=health["state"], problems=health["problems"]
                )
            self._last_key = key
            self._emit(health, publish=connected)
        self.last = health
        return health

    def _emit(self, health: dict[str, Any], *, publish: bool) -> None:
        payload = encode_json(health)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(payload + b"\n")
            os.replace(tmp, self.path)
        except OSError as exc:  # the state folder may be the very problem
            log.debug("health.file_not_written", path=str(self.path), error=str(exc))
            try:
                tmp.unlink(missing_ok=True)  # a full disk left a 0-byte .tmp behind otherwise
            except OSError:
                pass
        # Retained: only the latest matters, so none pile up in memory during an outage. Only a
        # snapshot taken while connected goes out: one from before the connection came up
        # would say "disconnected" to the broker; the reconnect forces a fresh one instead.
        if publish and self.publisher is not None and self.publisher.connected:
            self.publisher.enqueue(health_message(self.topics, payload))

    def _run(self) -> None:
        now = time.monotonic()
        next_health, next_stats = now + self.interval_s, now + self.stats_interval_s
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            try:
                due = now >= next_health
                self.check(force=due)
                if due:
                    next_health = now + self.interval_s
                if now >= next_stats and self.publisher is not None:
                    next_stats = now + self.stats_interval_s
                    stats = {**self.stats(), "ts": iso_utc(time.time())}
                    self.publisher.enqueue(stats_message(self.topics, stats))
            except Exception:  # health must never take the station down
                log.exception("health.failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
