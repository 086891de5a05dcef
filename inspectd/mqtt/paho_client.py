"""What the station changes in paho's client (paho-mqtt 2.x) for what it receives.

- **Subscriptions without retained messages.** The station subscribes to request topics only
  (``…/trigger``, ``…/cmd/+/set``). A retained request sat on the broker and ran again at every
  connect (issue 31); with MQTT 5 the broker is told not to send them (retain handling 2),
  3.1.1 has no such option and the desks refuse what arrives with the retain flag
  (``inspectd.mqtt.answers.refusal``).
- **A property value paho refuses does not cost the connection.** paho checks MQTT 5 property
  values as it decodes a PUBLISH (``Properties.__setattr__``: a payload format indicator other
  than 0 or 1, a property given twice, ...), takes the packet for malformed and closes the
  connection (``MQTT_ERR_PROTOCOL``). Brokers relay such values (mosquitto 2.0 does not check the
  payload format indicator), so anyone who may publish on a request topic could disconnect the
  station at will: 20 messages in 10 s gave 7 disconnects, 7 Last Will ``offline`` statuses and
  requests lost in the gaps (issue 31). ``LenientClient`` takes such a PUBLISH without the
  properties paho refuses (logged ``mqtt.invalid_property_ignored``) and hands it on as usual.
  Nothing else paho calls malformed is let through.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.subscribeoptions import SubscribeOptions

from inspectd.contract.messages import bounded

log = structlog.get_logger(__name__)

# what paho's own decoder lets escape while reading properties (paho.mqtt._packet.DECODE_ERRORS)
_DECODE_ERRORS = (struct.error, IndexError, KeyError, ValueError, MQTTException)


def subscribe_requests(client: mqtt.Client, topic_filter: str, *, v5: bool) -> None:
    """Subscribe to a request topic, QoS 1; MQTT 5: no retained messages at subscribe time."""
    if v5:
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe(topic_filter, options=options)
    else:
        client.subscribe(topic_filter, qos=1)  # paho ignores options with 3.1.1


class LenientClient(mqtt.Client):
    """paho's client, except that a PUBLISH whose property values paho refuses is received
    without those properties instead of ending the connection (see the module docstring)."""

    def _handle_publish(self) -> MQTTErrorCode:
        try:
            return super()._handle_publish()
        except MalformedPacket:  # raised by the decoding, before anything else was done
            if self._protocol != mqtt.MQTTv5:
                raise  # no properties in 3.1.1
            qos = (self._in_packet["command"] & 0x06) >> 1
            cleaned = without_refused_properties(bytes(self._in_packet["packet"]), qos)
            if cleaned is None:
                raise  # malformed for another reason: paho closes the connection, as before
            self._in_packet["packet"], dropped = cleaned
            log.warning(
                "mqtt.invalid_property_ignored",
                topic=bounded(_topic_of(cleaned[0])),
                properties=dropped,
                detail="an MQTT 5 property value paho refuses; the message is taken without it",
            )
            return super()._handle_publish()


def without_refused_properties(packet: bytes, qos: int) -> tuple[bytearray, list[str]] | None:
    """A PUBLISH's variable header and payload (``packet``) without the properties paho refuses,
    and what they were (``"Name=value"``); None when there are none or it cannot be read."""
    try:
        (topic_len,) = struct.unpack_from("!H", packet)
        start = 2 + topic_len + (2 if qos else 0)  # topic, packet id
        props_len, len_len = VariableByteIntegers.decode(packet[start:])
        props_end = start + len_len + props_len
        if props_end > len(packet):
            return None
        kept, dropped = _sort_properties(packet[start + len_len : props_end])
    except _DECODE_ERRORS:
        return None
    if not dropped:
        return None
    header = packet[:start] + VariableByteIntegers.encode(len(kept)) + kept
    return bytearray(header + packet[props_end:]), dropped


def _topic_of(packet: bytearray) -> str:
    (length,) = struct.unpack_from("!H", packet)
    return bytes(packet[2 : 2 + length]).decode("utf-8", "replace")


def _sort_properties(raw: bytes) -> tuple[bytes, list[str]]:
    """The encoded properties paho accepts, and the ones it refuses, read with paho's own
    readers and checked by its own setter, one at a time."""
    check = Properties(PacketTypes.PUBLISH)
    kept, dropped, pos = b"", [], 0
    while pos < len(raw):
        ident, ident_len = VariableByteIntegers.decode(raw[pos:])
        value, value_len = check.readProperty(
            raw[pos + ident_len :], check.properties[ident][0], len(raw) - pos - ident_len
        )
        end = pos + ident_len + value_len
        name = check.getNameFromIdent(ident).replace(" ", "")
        try:
            if not check.allowsMultiple(name) and hasattr(check, name):
                raise MQTTException(f"{name} given twice")
            setattr(check, name, value)
        except MQTTException:
            dropped.append(bounded(f"{name}={value!r}"))
        else:
            kept += raw[pos:end]
        pos = end
    return kept, dropped


def set_no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: turn Nagle's algorithm off. paho leaves it on, so a small
    PUBLISH written while the previous one is unacknowledged at the TCP level (the reject right
    after its verdict) waited for the broker's delayed ACK (docs/performance.md)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # TLS sockets take it too
    except OSError:
        pass  # a unix socket: no Nagle to turn off


def guarded(
    handler: Callable[[mqtt.MQTTMessage], None],
    on_crash: Callable[[mqtt.MQTTMessage, BaseException], None] | None,
    counted: Callable[[], None],
) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
    """A paho message callback that runs ``handler`` and keeps its exceptions from paho: paho
    re-raises a callback's exception, which ends its network thread; no PUBACK is read after
    that and verdicts silently stop (issue 15). An exception is logged, ``counted`` and given
    to ``on_crash`` (to answer the request)."""

    def dispatch(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            handler(msg)
        except Exception as exc:
            counted()
            topic = getattr(msg, "_topic", b"")  # bytes: .topic decodes, which may have failed
            where = topic.decode("utf-8", "replace") if isinstance(topic, bytes) else str(topic)
            try:
                log.error(
                    "mqtt.handler_failed",
                    topic=where,
                    error=type(exc).__name__,
                    payload_bytes=len(msg.payload or b""),
                    exc_info=exc,
                )
                if on_crash is not None:
                    on_crash(msg, exc)
            except Exception:  # the answer failed too: still nothing may reach paho
                log.exception(
                    "mqtt.handler_failed", topic=where, detail="the error answer failed too"
                )

    return dispatch
