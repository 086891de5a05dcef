"""Trigger requests on …/trigger: one inspection per request, answered once per request_id.

``{"request_id": str, "part_id": str, "deadline_ms": number?}``. A request is checked on paho's
thread (size, JSON, fields) and queued for the capture thread; its verdict is answered on the
request's response topic (MQTT 5) or ``…/trigger/response``, with the correlation data echoed,
as ``{"request_id", "part_id", "status": "done"|"expired", "verdict": {…the verdict payload…}}``.
A request_id seen before is answered from a cache (``"duplicate": true``) without a second
inspection, also while the first is still in progress. Anything malformed is answered on
``…/error`` and the daemon goes on.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from inspectd.frame import TriggerRequest
from inspectd.mqtt.answers import ReplyTo, publish_error, reply
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.mqtt.topics import Topics
from inspectd.pipeline import TRIGGER_EXPIRED, Inspection

log = structlog.get_logger(__name__)

MAX_ID_CHARS = 128
DEFAULT_CACHE = 1000  # answered request_ids remembered for duplicates
DEFAULT_QUEUE = 256  # requests waiting for the camera


class TriggerDesk:
    """Takes requests from MQTT, feeds ``queue`` to the pipeline, and answers verdicts as the
    sink that sees them after they are recorded (so the answer carries the seq)."""

    def __init__(
        self,
        publisher: MqttPublisher,
        topics: Topics,
        *,
        accepting: bool,
        max_bytes: int,
        cache_size: int = DEFAULT_CACHE,
        queue_size: int = DEFAULT_QUEUE,
    ) -> None:
        self.publisher = publisher
        self.topics = topics
        self.accepting = accepting
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self.queue: queue.Queue[TriggerRequest] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        # in progress: who to answer, and whether that request was a duplicate
        self._waiting: dict[str, list[tuple[ReplyTo, bool]]] = {}
        self._answered: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counts = {"requests": 0, "duplicates": 0, "refused": 0}

    @property
    def response_topic(self) -> str:
        return f"{self.topics.trigger}/response"

    # paho's network thread: quick checks, no blocking
    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        to = ReplyTo.of(msg)
        request = self._parse(msg.payload, to)
        if request is None:
            return
        request_id = request.request_id
        with self._lock:
            cached = self._answered.get(request_id)
            if cached is None and request_id in self._waiting:
                self._waiting[request_id].append((to, True))
                self.counts["duplicates"] += 1
                return
            if cached is None:
                self._waiting[request_id] = [(to, False)]
            else:
                self.counts["duplicates"] += 1
        if cached is not None:
            reply(self.publisher, to, self.response_topic, {**cached, "duplicate": True})
            return
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            with self._lock:
                self._waiting.pop(request_id, None)
            self._refuse(to, "overloaded", f"{self.queue.maxsize} requests already wait for "
                         "the camera", request_id=request_id)  # fmt: skip
            return
        self.counts["requests"] += 1

    def _parse(self, payload: bytes, to: ReplyTo) -> TriggerRequest | None:
        if len(payload) > self.max_bytes:
            self._refuse(to, "payload_too_large", f"{len(payload)} bytes, at most {self.max_bytes}")
            return None
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            self._refuse(to, "malformed_json", f"not JSON: {exc}")
            return None
        if not isinstance(body, dict):
            self._refuse(to, "invalid_request", "expected a JSON object")
            return None
        request_id = body.get("request_id")
        problem = None
        for key in ("request_id", "part_id"):
            value = body.get(key)
            if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
                problem = f"{key} must be a non-empty string of at most {MAX_ID_CHARS} characters"
                break
        deadline_ms = body.get("deadline_ms")
        if problem is None and deadline_ms is not None:
            if (
                isinstance(deadline_ms, bool)
                or not isinstance(deadline_ms, int | float)
                or not math.isfinite(deadline_ms)
                or deadline_ms <= 0
            ):
                problem = "deadline_ms must be a positive number of milliseconds"
        unknown = sorted(set(body) - {"request_id", "part_id", "deadline_ms"})
        if problem is None and unknown:
            problem = f"unknown field(s) {unknown}; allowed: request_id, part_id, deadline_ms"
        rid = request_id if isinstance(request_id, str) else None
        if problem is not None:
            self._refuse(to, "invalid_request", problem, request_id=rid)
            return None
        if not self.accepting:
            self._refuse(to, "not_triggered", "this station's camera runs free (camera.trigger: "
                         "free_run); it inspects every frame without requests", request_id=rid)  # fmt: skip
            return None
        deadline = None if deadline_ms is None else time.monotonic() + deadline_ms / 1000.0
        return TriggerRequest(body["request_id"], body["part_id"], deadline)

    def _refuse(self, to: ReplyTo, code: str, detail: str, **fields: Any) -> None:
        self.counts["refused"] += 1
        publish_error(self.publisher, self.topics, to, code, detail, **fields)

    # the pipeline's sink thread, after the verdict was recorded
    def handle(self, inspection: Inspection) -> None:
        record = inspection.record
        if record.request_id is None:
            return
        expired = (record.error or "").startswith(TRIGGER_EXPIRED)
        answer = {
            "request_id": record.request_id,
            "part_id": record.part_id,
            "status": "expired" if expired else "done",
            "verdict": record.to_payload(),
        }
        with self._lock:
            waiting = self._waiting.pop(record.request_id, [])
            self._answered[record.request_id] = answer
            while len(self._answered) > self.cache_size:
                self._answered.popitem(last=False)
        for to, duplicate in waiting:
            reply(self.publisher, to, self.response_topic,
                  {**answer, "duplicate": True} if duplicate else answer)  # fmt: skip

    def close(self) -> None:
        """At stop: requests that were never inspected are answered on …/error, not dropped."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for request_id, tos in waiting.items():
            for to, _ in tos:
                self._refuse(to, "not_inspected", "the station stopped before this request's "
                             "frame was taken", request_id=request_id)  # fmt: skip
