"""MQTT 5 on the wire, for what the station publishes: a message's PUBLISH properties (content
type, payload format, message expiry, user properties, correlation data) and the names of PUBACK
reason codes. MQTT 3.1.1 has neither; the publisher asks for properties only on MQTT 5."""

from __future__ import annotations

import math

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from inspectd.contract.messages import OutgoingMessage, remaining_s

REFUSED = 0x80  # PUBACK reason codes from here on are failures (MQTT 5.0, 3.4.2.1)


def reason_name(code: int) -> str:
    """A PUBACK reason code as MQTT 5 names it, with its number: "Not authorized (0x87)"."""
    try:
        name = ReasonCode(PacketTypes.PUBACK, identifier=code).getName()
    except (KeyError, ValueError):
        name = "not a PUBACK reason code"
    return f"{name} (0x{code:02x})"


def new_properties(content_type: str | None, packet_type: int = PacketTypes.PUBLISH) -> Properties:
    props = Properties(packet_type)
    if content_type is not None:
        if content_type == "application/json" or content_type.startswith("text/"):
            props.PayloadFormatIndicator = 1  # UTF-8 text
        props.ContentType = content_type
    return props


class PublishProperties:
    """The properties of each message; the plain ones (a content type and nothing else) are
    made once per content type and shared. Only the publisher's sender thread calls it."""

    def __init__(self) -> None:
        self._plain: dict[str, Properties] = {}

    def of(self, message: OutgoingMessage) -> Properties | None:
        left = remaining_s(message)
        plain = left is None and not message.user_properties and message.correlation_data is None
        if plain:
            if message.content_type is None:
                return None
            props = self._plain.get(message.content_type)
            if props is None:
                props = self._plain[message.content_type] = new_properties(message.content_type)
            return props
        props = new_properties(message.content_type)
        if left is not None:
            props.MessageExpiryInterval = max(1, math.ceil(left))
        if message.user_properties:
            props.UserProperty = list(message.user_properties)
        if message.correlation_data is not None:
            props.CorrelationData = message.correlation_data
        return props
