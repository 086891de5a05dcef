"""Commands on …/cmd/<name>/set: a whitelist, run one at a time off paho's thread.

Each command is a handler ``payload dict -> result dict`` that raises ``CommandError`` to
refuse. Results are answered on the request's response topic (MQTT 5) or
``…/cmd/<name>/result``; refusals, unknown commands and malformed payloads on ``…/error``.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from inspectd.mqtt.answers import ReplyTo, publish_error, reply
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.mqtt.topics import Topics

log = structlog.get_logger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class CommandError(Exception):
    """A command that cannot be carried out; the message says why."""


class CommandDesk:
    def __init__(
        self,
        publisher: MqttPublisher,
        topics: Topics,
        handlers: dict[str, Handler],
        *,
        max_bytes: int,
    ) -> None:
        self.publisher = publisher
        self.topics = topics
        self.handlers = dict(handlers)
        self.max_bytes = max_bytes
        self._work: queue.Queue[tuple[str, dict[str, Any], ReplyTo] | None] = queue.Queue(100)
        self._thread = threading.Thread(target=self._worker, name="commands", daemon=True)
        self._thread.start()

    # paho's network thread
    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        to = ReplyTo.of(msg)
        prefix = f"{self.topics.base}/cmd/"
        name = msg.topic[len(prefix) : -len("/set")] if msg.topic.startswith(prefix) else ""
        if name not in self.handlers:
            allowed = ", ".join(sorted(self.handlers))
            self._refuse(to, "unknown_command", f"{name!r} is not a command; allowed: {allowed}")
            return
        if len(msg.payload) > self.max_bytes:
            self._refuse(to, "payload_too_large", f"{len(msg.payload)} bytes, at most {self.max_bytes}")
            return
        try:
            args = json.loads(msg.payload) if msg.payload.strip() else {}
        except (UnicodeDecodeError, ValueError) as exc:
            self._refuse(to, "malformed_json", f"not JSON: {exc}", command=name)
            return
        if not isinstance(args, dict):
            self._refuse(to, "invalid_request", "expected a JSON object", command=name)
            return
        try:
            self._work.put_nowait((name, args, to))
        except queue.Full:
            self._refuse(to, "overloaded", "too many commands waiting", command=name)

    def _worker(self) -> None:
        while (item := self._work.get()) is not None:
            name, args, to = item
            try:
                result = self.handlers[name](args)
            except CommandError as exc:
                self._refuse(to, "command_failed", str(exc), command=name)
                continue
            except Exception as exc:  # a bug must not end the command thread
                log.exception("command.crashed", command=name)
                self._refuse(to, "command_failed", f"{type(exc).__name__}: {exc}", command=name)
                continue
            log.info("command.done", command=name, **result)
            fallback = f"{self.topics.base}/cmd/{name}/result"
            reply(self.publisher, to, fallback, {"command": name, "ok": True, **result})

    def _refuse(self, to: ReplyTo, code: str, detail: str, **fields: Any) -> None:
        publish_error(self.publisher, self.topics, to, code, detail, **fields)

    def close(self) -> None:
        self._work.put(None)
        self._thread.join(timeout=30.0)
