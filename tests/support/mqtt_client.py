"""A real paho MQTT client for tests: subscribes and collects what arrives."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

_PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Properties | None  # MQTT 5 only

    def json(self) -> Any:
        return json.loads(self.payload.decode("utf-8"))


class Subscriber:
    """Connects, subscribes to ``topic_filter`` (QoS 1) and collects messages, thread-safely.

    ``persistent=True`` keeps the session on the broker (clean session off / session expiry), so
    messages published while this client is away are queued for it: outage tests use that.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        protocol: str = "5",
        client_id: str | None = None,
        persistent: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.topic_filter = topic_filter
        self.protocol = protocol
        self._lock = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{time.monotonic_ns()}",
            protocol=_PROTOCOLS[protocol],
            clean_session=None if v5 else not persistent,
        )
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        if v5:
            from paho.mqtt.packettypes import PacketTypes

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if persistent else 0
            self._client.connect(host, port, 30, clean_start=not persistent, properties=props)
        else:
            self._client.connect(host, port, 30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise AssertionError(f"no SUBACK for {topic_filter!r} from {host}:{port}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties if self.protocol == "5" else None
        with self._lock:
            self._messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), props))
            self._lock.notify_all()

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def wait_for(self, n: int, timeout: float = 5.0, *, topic: str | None = None) -> list[Received]:
        """The first messages once at least ``n`` (on ``topic``, if given) have arrived."""
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self.messages(topic)) >= n, timeout)
            got = self.messages(topic)
        if not ok:
            shown = [(m.topic, m.payload[:120]) for m in got[-10:]]
            raise AssertionError(
                f"expected {n} messages on {topic or self.topic_filter!r} within {timeout} s, "
                f"got {len(got)}; last ones: {shown}"
            )
        return got

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
