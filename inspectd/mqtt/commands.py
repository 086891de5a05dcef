"""Commands on …/cmd/<name>/set: a whitelist, run one at a time off paho's thread.

Each command is a handler ``payload dict -> result dict`` that raises ``CommandError`` to
refuse. Results are answered on the request's response topic (MQTT 5) or
``…/cmd/<name>/result``; refusals, unknown commands and malformed payloads on ``…/error``.
A retained command never runs (``inspectd.mqtt.answers.refusal``): it ran again at every
connect.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from inspectd.contract.messages import command_answer
from inspectd.contract.topics import Topics, command_topic
from inspectd.contract.vocabulary import ErrorCode
from inspectd.mqtt.answers import ReplyTo, publish_error, refusal, reply
from inspectd.mqtt.inbound import RequestError, parse_object
from inspectd.mqtt.publisher import MqttPublisher

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
        self.errors: dict[str, int] = {}  # refusals by code
        self._lock = threading.Lock()  # errors: from paho's thread and the worker
        self._work: queue.Queue[tuple[str, dict[str, Any], ReplyTo] | None] = queue.Queue(100)
        self._thread = threading.Thread(target=self._worker, name="commands", daemon=True)
        self._thread.start()

    def threads(self) -> dict[str, threading.Thread | None]:
        """The worker that runs the commands, for the station's thread watch."""
        return {"commands": self._thread}

    # paho's network thread
    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        to = ReplyTo.of(msg, self.topics)
        parsed = command_topic(msg.topic)
        name = parsed[1] if parsed and parsed[0] == self.topics.base and parsed[2] == "set" else ""
        if name not in self.handlers:
            allowed = ", ".join(sorted(self.handlers))
            self._refuse(
                to, ErrorCode.UNKNOWN_COMMAND, f"{name[:64]!r} is not a command; allowed: {allowed}"
            )
            return
        refused = refusal(msg, to)
        if refused is not None:  # retained: never run; or a response topic not answered on
            self._refuse(to, *refused, command=name)
            return
        try:
            args = parse_object(msg.payload, self.max_bytes, empty_ok=True)
        except RequestError as exc:
            self._refuse(to, exc.code, exc.detail, command=name)
            return
        try:
            self._work.put_nowait((name, args, to))
        except queue.Full:
            self._refuse(to, "overloaded", "too many commands waiting", command=name)

    def on_crash(self, msg: mqtt.MQTTMessage, exc: BaseException) -> None:
        """The publisher's last-resort guard caught ``exc`` from ``on_message``: answered."""
        self._refuse(
            ReplyTo.of(msg, self.topics),
            ErrorCode.INTERNAL_ERROR,
            f"the station failed on this command ({type(exc).__name__}); it was not run",
        )

    def _worker(self) -> None:
        while (item := self._work.get()) is not None:
            name, args, to = item
            try:
                result = self.handlers[name](args)
            except CommandError as exc:
                self._refuse(to, ErrorCode.COMMAND_FAILED, str(exc), command=name)
                continue
            except Exception as exc:  # a bug must not end the command thread
                log.exception("command.crashed", command=name)
                self._refuse(
                    to, ErrorCode.COMMAND_FAILED, f"{type(exc).__name__}: {exc}", command=name
                )
                continue
            log.info("command.done", command=name, **result)
            reply(self.publisher, to, self.topics.cmd(name, "result"), command_answer(name, result))

    def _refuse(self, to: ReplyTo, code: str, detail: str, **fields: Any) -> None:
        with self._lock:
            self.errors[code] = self.errors.get(code, 0) + 1
        publish_error(self.publisher, self.topics, to, code, detail, **fields)

    def stats(self) -> dict[str, Any]:
        """Commands refused, by code (for …/stats and /metrics)."""
        with self._lock:
            return {"errors": dict(self.errors)}

    def problems(self) -> list[str]:
        """None of its own: a refused command is answered to its requester (…/error)."""
        return []

    def close(self) -> None:
        self._work.put(None)
        self._thread.join(timeout=30.0)
