"""Trigger requests on …/trigger: one inspection per request, answered once per request_id.

``{"request_id": str, "part_id": str, "deadline_ms": number?}``. A request is checked on paho's
thread (size, JSON, fields) and handed to the handshake core (``inspectd.plc.handshake``, shared
with OPC UA and Modbus), which queues it for the capture thread and answers it once; the answer
goes to the request's response topic (MQTT 5) or ``…/trigger/response``, with the correlation
data echoed, as ``{"request_id", "part_id", "status": "done"|"late", "verdict": {…}}`` (a late
answer is NG before the verdict exists; the verdict follows on …/verdict with ``late: true``).
A request_id seen before is answered from a cache (``"duplicate": true``) without a second
inspection, also while the first is still in progress. A retained request is never inspected
and a response topic inside the station's base is refused (``answers.refusal``). Anything
malformed is answered on ``…/error`` and the daemon goes on (``inspectd.mqtt.inbound`` parses;
ids that cannot travel as UTF-8 MQTT strings are refused, not escaped: a requester matches
answers on its exact id).

Refusals are counted by code, overload apart from malformed requests: a full queue is the
station's problem (health says ``trigger_overloaded`` while it lasts), a malformed request the
requester's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from inspectd.contract.messages import trigger_answer
from inspectd.contract.topics import Topics
from inspectd.contract.vocabulary import ErrorCode
from inspectd.mqtt.answers import ReplyTo, publish_error, refusal, reply
from inspectd.mqtt.inbound import RequestError, id_problem, parse_object, safe_id
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.plc.handshake import NOT_INSPECTED, Handshake, Result

log = structlog.get_logger(__name__)

DEFAULT_CACHE = 1000  # answered request_ids remembered for duplicates
# A deadline beyond a day is a mistake, and a huge one overflowed later (the reject's wall-time
# deadline_ts, the expiry): refused here instead.
MAX_DEADLINE_MS = 86_400_000
# Health says trigger_overloaded from the first request refused for a full queue until this
# long after the last one: a burst lasts milliseconds, health is looked at every second.
OVERLOAD_HOLD_S = 10.0


class TriggerDesk:
    """Takes requests from MQTT into the handshake core and publishes its answers; keeps what is
    MQTT's own: reply topics, correlation data, the duplicate cache, refusals on …/error."""

    def __init__(
        self,
        publisher: MqttPublisher,
        topics: Topics,
        *,
        accepting: bool,
        max_bytes: int,
        handshake: Handshake | None = None,
        cache_size: int = DEFAULT_CACHE,
    ) -> None:
        self.publisher = publisher
        self.topics = topics
        self.accepting = accepting and handshake is not None
        self.handshake = handshake
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self._lock = threading.Lock()
        # in progress: who to answer, and whether that request was a duplicate
        self._waiting: dict[str, list[tuple[ReplyTo, bool]]] = {}
        self._answered: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # requests: accepted for inspection; refused: answered on …/error for what the request
        # was (malformed, invalid, …); overloaded: refused for a full queue; errors: by code
        self.counts: dict[str, Any] = {
            "requests": 0,
            "duplicates": 0,
            "refused": 0,
            "overloaded": 0,
            "errors": {},
        }
        self.overload_hold_s = OVERLOAD_HOLD_S
        self._overload: tuple[float, float, int] | None = None  # first, last, refused: the episode

    @property
    def response_topic(self) -> str:
        return f"{self.topics.trigger}/response"

    # paho's network thread: quick checks, no blocking
    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        to = ReplyTo.of(msg, self.topics)
        refused = refusal(msg, to)
        if refused is not None:  # retained, or a response topic not answered on
            self._refuse(to, *refused, request_id=self._request_id_of(msg.payload))
            return
        if not self.accepting:  # before parsing: nothing in the payload matters then
            self._refuse(
                to,
                ErrorCode.NOT_TRIGGERED,
                "this station's camera runs free (camera.trigger: "
                "free_run); it inspects every frame without requests",
                request_id=self._request_id_of(msg.payload),
            )
            return
        request = self._parse(msg.payload, to)
        if request is None:
            return
        request_id, part_id, deadline = request
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
        assert self.handshake is not None  # accepting
        declined = self.handshake.submit(
            request_id, part_id, deadline, partial(self._answer, request_id)
        )
        if declined is not None:
            with self._lock:
                self._waiting.pop(request_id, None)
            self._refuse(to, declined.code, declined.text, request_id=request_id)
            return
        self.counts["requests"] += 1

    def on_crash(self, msg: mqtt.MQTTMessage, exc: BaseException) -> None:
        """The publisher's last-resort guard caught ``exc`` from ``on_message``: a bug, answered
        so the requester is not left waiting (the log has the traceback)."""
        self._refuse(
            ReplyTo.of(msg, self.topics),
            ErrorCode.INTERNAL_ERROR,
            f"the station failed on this request ({type(exc).__name__}); it was not inspected",
        )

    def _request_id_of(self, payload: bytes | bytearray) -> str | None:
        try:
            return safe_id(parse_object(payload, self.max_bytes).get("request_id"))
        except RequestError:
            return None

    def _parse(
        self, payload: bytes | bytearray, to: ReplyTo
    ) -> tuple[str, str, float | None] | None:
        """request_id, part_id and the deadline (monotonic), or None when refused."""
        try:
            body = parse_object(payload, self.max_bytes)
        except RequestError as exc:
            self._refuse(to, exc.code, exc.detail)
            return None
        problem = id_problem("request_id", body.get("request_id")) or id_problem(
            "part_id", body.get("part_id")
        )
        deadline_ms = body.get("deadline_ms")
        if problem is None and deadline_ms is not None:
            # no math.isfinite: it converts an int to float, OverflowError past 1e308
            if (
                isinstance(deadline_ms, bool)
                or not isinstance(deadline_ms, int | float)
                or not 0 < deadline_ms <= MAX_DEADLINE_MS  # NaN fails this too
            ):
                problem = (
                    f"deadline_ms must be a positive number of milliseconds, at most "
                    f"{MAX_DEADLINE_MS}"
                )
        unknown = sorted(set(body) - {"request_id", "part_id", "deadline_ms"})
        if problem is None and unknown:
            shown = [k[:40] for k in unknown[:10]]  # repr escapes what cannot be encoded
            problem = f"unknown field(s) {shown}; allowed: request_id, part_id, deadline_ms"
        if problem is not None:
            self._refuse(
                to, ErrorCode.INVALID_REQUEST, problem, request_id=safe_id(body.get("request_id"))
            )
            return None
        deadline = None if deadline_ms is None else time.monotonic() + deadline_ms / 1000.0
        return body["request_id"], body["part_id"], deadline

    def _refuse(self, to: ReplyTo, code: str, detail: str, **fields: Any) -> None:
        with self._lock:
            errors = self.counts["errors"]
            errors[code] = errors.get(code, 0) + 1
            if code == "overloaded":
                self.counts["overloaded"] += 1
                now = time.monotonic()
                first, last, n = self._overload or (now, now, 0)
                if now - last > self.overload_hold_s:
                    first, n = now, 0  # a new episode
                self._overload = (first, now, n + 1)
            else:
                self.counts["refused"] += 1
        publish_error(self.publisher, self.topics, to, code, detail, **fields)

    def stats(self) -> dict[str, Any]:
        """The counters, the queue and the overload episode (for …/stats, health, /metrics)."""
        with self._lock:
            counts = {**self.counts, "errors": dict(self.counts["errors"])}
        core = self.handshake.stats() if self.handshake is not None else {}
        return {
            **counts,
            "late": core.get("late", 0),
            "queued": core.get("queued", 0),
            "queue_max": core.get("queue_max", 0),
            "overload": self.overload(),
        }

    def problems(self) -> list[str]:
        """``trigger_overloaded`` during an overload episode (see ``overload``)."""
        o = self.overload()
        if o is None:
            return []
        queue_max = self.handshake.queue.maxsize if self.handshake is not None else 0
        return [
            f"trigger_overloaded: {o['refused']} requests refused in {o['since_s']:.0f} s, "
            f"{queue_max} already waiting for the camera"
        ]

    def overload(self) -> dict[str, Any] | None:
        """While requests are refused for a full queue, and ``overload_hold_s`` after the last:
        how many this episode and since when; else None."""
        with self._lock:
            episode = self._overload
        if episode is None:
            return None
        first, last, n = episode
        now = time.monotonic()
        if now - last > self.overload_hold_s:
            return None
        return {"refused": n, "since_s": round(now - first, 1), "last_s": round(now - last, 1)}

    # the handshake's answer: the publish thread (in time), its deadline thread (late), or the
    # station's stop (not inspected)
    def _answer(self, request_id: str, result: Result) -> None:
        with self._lock:
            waiting = self._waiting.pop(request_id, [])
        if result.status == NOT_INSPECTED:
            for to, _ in waiting:
                self._refuse(to, NOT_INSPECTED, result.text or "", request_id=request_id)
            return
        answer = trigger_answer(
            request_id,
            result.part_id,
            result.status,
            result.verdict,
            result.record,
            f"{result.code}: {result.text}",
        )
        with self._lock:
            self._answered[request_id] = answer
            while len(self._answered) > self.cache_size:
                self._answered.popitem(last=False)
        for to, duplicate in waiting:
            reply(
                self.publisher,
                to,
                self.response_topic,
                {**answer, "duplicate": True} if duplicate else answer,
            )

    def close(self) -> None:
        """Nothing of its own: requests never inspected are answered ``not_inspected`` by the
        handshake core when it closes (``_answer``)."""
