"""A requester as a PLC gateway or MES is one: a plain paho 2.x client that subscribes, collects
what arrives and publishes triggers and commands with MQTT 5 ResponseTopic/CorrelationData; and
a triggered station (the daemon under test with such a requester beside it)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from support.daemon_process import Daemon
from support.mqtt_client import Received
from support.paths import PRODUCTS
from support.station import BASE, ERROR, STATUS, TRIGGER, VERDICT, station_config


def request_station_config(
    tmp: Path,
    port: int,
    frames: Path,
    *,
    products_dir: Path = PRODUCTS,
    camera: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """The requests tests' station: the folder camera loops over ``frames``, the broker gets
    2 s to take stored verdicts on stop, no output files."""
    return station_config(
        tmp,
        port=port,
        products_dir=products_dir,
        camera={"path": frames, "loop": True, **(camera or {})},
        mqtt={"drain_timeout_s": 2, **(mqtt or {})},
        output=None,
        **overrides,
    )


def correlation(msg: Received) -> bytes | None:
    value = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
    return bytes(value) if value is not None else None


class Requester:
    """A plain paho 2.x client: subscribes to ``filters`` (QoS 1), collects what arrives and
    publishes requests with MQTT 5 ResponseTopic/CorrelationData."""

    def __init__(
        self,
        host: str,
        port: int,
        filters: Iterable[str],
        *,
        protocol: str = "5",
        ca_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.v5 = protocol == "5"
        self.filters = list(filters)
        self._cv = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self._failure: str | None = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-requester-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else True,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout) or self._failure:
            self.close()
            raise AssertionError(
                f"requester not subscribed to {self.filters} at {host}:{port}: "
                f"{self._failure or 'no SUBACK'}"
            )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._failure = f"CONNACK {reason_code}"
            self._subscribed.set()
            return
        client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            self._failure = f"SUBACK {bad}"
        self._subscribed.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties if self.v5 else None
        with self._cv:
            self._messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), props))
            self._cv.notify_all()

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        retain: bool = False,
    ) -> None:
        props = None
        if self.v5 and (response_topic is not None or correlation_data is not None):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(5)
        assert info.is_published(), f"request on {topic} not acknowledged by the broker"

    def messages(self, where: Callable[[Received], bool] | str | None = None) -> list[Received]:
        if isinstance(where, str):
            topic = where
            where = lambda m: m.topic == topic  # noqa: E731
        with self._cv:
            return [m for m in self._messages if where is None or where(m)]

    def wait(
        self, where: Callable[[Received], bool] | str, n: int = 1, timeout: float = 15.0
    ) -> list[Received]:
        """The matching messages once at least ``n`` arrived."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(got := self.messages(where)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    shown = [(m.topic, m.payload[:160]) for m in self._messages[-8:]]
                    raise AssertionError(
                        f"{len(got)} of {n} expected messages within "
                        f"{timeout} s; last ones: {shown}"
                    )
                self._cv.wait(left)
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Requester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_online(req: Requester, product: str = "button", timeout: float = 20.0) -> dict[str, Any]:
    """The daemon is connected and subscribed: it subscribes before it publishes ``online``."""

    def online(m: Received) -> bool:
        if m.topic != STATUS:
            return False
        body = m.json()
        return body["state"] == "online" and body["product"] == product

    return req.wait(online, timeout=timeout)[-1].json()


class Station:
    """A triggered station (camera.trigger: mqtt) and a requester on the same broker."""

    def __init__(self, daemon: Daemon, req: Requester, tmp: Path) -> None:
        self.daemon = daemon
        self.req = req
        self.tmp = tmp
        self.reply_topic = f"requester/{uuid.uuid4().hex[:8]}/answers"
        self._n = 0

    def trigger(
        self,
        request_id: str,
        part_id: str | None = None,
        *,
        corr: bytes | None = None,
        wait: bool = True,
        **extra: Any,
    ) -> Received | None:
        """Send a trigger request; the answer on the response topic (matched by correlation)."""
        self._n += 1
        corr = corr if corr is not None else f"corr-{self._n}-{request_id}".encode()
        body = {"request_id": request_id, "part_id": part_id or f"part-{request_id}", **extra}
        self.req.publish(TRIGGER, body, response_topic=self.reply_topic, correlation_data=corr)
        if not wait:
            return None
        return self.answer(corr)

    def answer(self, corr: bytes, n: int = 1) -> Received:
        return self.req.wait(lambda m: m.topic == self.reply_topic and correlation(m) == corr, n=n)[
            n - 1
        ]

    def verdicts(self, request_id: str | None = None) -> list[dict[str, Any]]:
        out = [m.json() for m in self.req.messages(VERDICT)]
        return [v for v in out if request_id is None or v["request_id"] == request_id]

    def wait_verdict(self, request_id: str) -> dict[str, Any]:
        msg = self.req.wait(lambda m: m.topic == VERDICT and m.json()["request_id"] == request_id)
        return msg[0].json()

    def command(
        self, name: str, args: dict[str, Any] | bytes | None = None, *, reply: bool = True
    ) -> bytes:
        """Publish on …/cmd/<name>/set; returns the correlation data sent."""
        self._n += 1
        corr = f"cmd-{self._n}-{name}".encode()
        payload = b"" if args is None else args
        self.req.publish(
            f"{BASE}/cmd/{name}/set",
            payload,
            response_topic=self.reply_topic if reply else None,
            correlation_data=corr,
        )
        return corr

    def error_for(self, corr: bytes) -> dict[str, Any]:
        msg = self.req.wait(lambda m: m.topic == ERROR and correlation(m) == corr)[0]
        body = msg.json()
        assert body["correlation_data"] == corr.hex()
        return body


def stop_cleanly(st: Station) -> None:
    rc = st.daemon.terminate()
    assert rc == 0, st.daemon.tail()
    stopped = st.req.wait(lambda m: m.topic == STATUS and m.json()["state"] == "stopped")
    assert stopped
