"""The UI's one MQTT connection: subscribes to the stations, sends their commands, matches answers.

paho runs its own network thread; every message is handed to the event loop with
``call_soon_threadsafe`` (``deliver``), and an answer resolves its request's future there.
Commands go out as the contract asks: ``…/cmd/<name>/set`` with an MQTT 5 response topic
and correlation data; refusals come back on the station's ``…/error`` with the correlation
data echoed. Under MQTT 3.1.1 answers arrive on ``…/cmd/<name>/result`` and are matched to the
oldest request waiting for that station and command.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inspectd.contract.topics import Topics, command_topic
from inspectd.mqtt import login
from inspectd.mqtt.paho_client import LenientClient
from inspectd.ui.config import UiMqtt

log = structlog.get_logger(__name__)

Deliver = Callable[[str, bytes, dict[str, str]], None]


class CommandTimeout(Exception):
    """The station did not answer in time (offline, or busy switching product)."""


class MqttLink:
    def __init__(
        self,
        cfg: UiMqtt,
        patterns: tuple[str, ...],
        deliver: Deliver,
        on_connection: Callable[[bool, str | None], None],
        *,
        password: str | None = None,  # a station config's inline one (the page's is a file)
    ) -> None:
        self.cfg = cfg
        self.patterns = patterns
        self.deliver = deliver
        self.on_connection = on_connection
        self.v5 = cfg.protocol == "5"
        self.client_id = cfg.client_id or f"inspectd-ui-{uuid.uuid4().hex[:10]}"
        self.reply_topic = f"inspectd-ui/{self.client_id}/answers"
        self.loop: asyncio.AbstractEventLoop | None = None
        # correlation id -> (future, base, command); touched on the loop only
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], str, str]] = {}
        # paho's, but a PUBLISH with a property value paho refuses costs only that property,
        # not the page's connection (inspectd.mqtt.paho_client)
        self._client = LenientClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        login.apply(
            self._client,
            login.credentials(
                cfg.username, password=password, password_file=cfg.password_file, tls=cfg.tls
            ),
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # connect_async: a broker that is not up yet is retried in the background
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho's thread ---------------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._to_loop(self.on_connection, False, f"refused: {reason}")
            return
        subs = [(f"{p}/#", 1) for p in self.patterns] + [(self.reply_topic, 1)]
        client.subscribe(subs)
        log.info(
            "ui.mqtt_connected", host=self.cfg.host, port=self.cfg.port, stations=self.patterns
        )
        self._to_loop(self.on_connection, True, None)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._to_loop(self.on_connection, False, f"disconnected: {reason}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props: dict[str, str] = {}
        correlation: bytes | None = None
        if self.v5 and msg.properties is not None:
            props = {k: v for k, v in getattr(msg.properties, "UserProperty", []) or []}
            correlation = getattr(msg.properties, "CorrelationData", None)
        self._to_loop(self._arrived, msg.topic, bytes(msg.payload), props, correlation)

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    # -- the loop --------------------------------------------------------------------------------

    def _arrived(
        self, topic: str, payload: bytes, props: dict[str, str], correlation: bytes | None
    ) -> None:
        command = command_topic(topic)
        if (
            topic == self.reply_topic
            or topic.endswith("/error")
            or (command is not None and command[2] == "result")
        ):
            if self._answer(topic, payload, correlation):
                return
        if topic != self.reply_topic:
            self.deliver(topic, payload, props)

    def _answer(self, topic: str, payload: bytes, correlation: bytes | None) -> bool:
        """Resolve the request this answers; False when it answers none of ours."""
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False
        if not isinstance(doc, dict):
            return False
        key = correlation.decode("ascii", "replace") if correlation else None
        if key is None and isinstance(doc.get("correlation_data"), str):
            key = (
                bytes.fromhex(doc["correlation_data"]).decode("ascii", "replace")
                if _hex(doc["correlation_data"])
                else None
            )
        answered = command_topic(topic)
        if key is None and answered and answered[2] == "result":  # 3.1.1: the oldest waiting
            base, command, _ = answered
            key = next(
                (k for k, (_, b, c) in self._pending.items() if b == base and c == command), None
            )
        found = self._pending.pop(key, None) if key else None
        if found is None:
            return False
        future, base, command = found
        if not future.done():
            ok = "error" not in doc
            future.set_result(
                {"command": command, "base": base, "ok": ok, "result" if ok else "refusal": doc}
            )
        return True

    async def request(
        self, base: str, command: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Send a command to a station and wait for its answer: {"command", "base", "ok",
        "result" | "refusal"}. Raises CommandTimeout."""
        assert self.loop is not None
        key = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._pending[key] = (future, base, command)
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = key.encode("ascii")
        info = self._client.publish(
            Topics(base).cmd(command), json.dumps(args), qos=1, properties=properties
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._pending.pop(key, None)
            raise CommandTimeout(
                f"not sent: the UI is not connected to the broker ({mqtt.error_string(info.rc)})"
            )
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CommandTimeout(
                f"no answer from {base} within {timeout:g} s (offline or busy?)"
            ) from None
        finally:
            self._pending.pop(key, None)


def _hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
        return True
    except ValueError:
        return False
