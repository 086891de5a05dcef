"""inspectd.mqtt.paho_client: a PUBLISH without the property values paho refuses (issue 31,
item 7), on hand-built packets; the whole path (mosquitto, the daemon) is in
tests/daemon/test_mqtt_inbound.py."""

from __future__ import annotations

import struct

import pytest
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inspectd.mqtt.paho_client import without_refused_properties

from support.raw_mqtt import (
    CORRELATION_DATA,
    PAYLOAD_FORMAT_INDICATOR,
    RESPONSE_TOPIC,
    binary_property,
    byte_property,
    text,
    text_property,
    varint,
)

CONTENT_TYPE = 0x03
GOOD = text_property(RESPONSE_TOPIC, "requester/answers") + binary_property(CORRELATION_DATA, b"c1")


def publish_body(props: bytes, qos: int = 1, payload: bytes = b'{"request_id":"r"}') -> bytes:
    """A PUBLISH after its fixed header: topic, packet id (QoS > 0), properties, payload."""
    mid = struct.pack("!H", 7) if qos else b""
    return text("a/trigger") + mid + varint(len(props)) + props + payload


def decoded(body: bytes, qos: int) -> tuple[Properties, bytes]:
    """What paho's decoder makes of ``body``'s properties (it raises on a refused one)."""
    start = 2 + len("a/trigger") + (2 if qos else 0)
    props = Properties(PacketTypes.PUBLISH)
    _, used = props.unpack(body[start:])
    return props, body[start + used :]


@pytest.mark.parametrize("qos", [0, 1])
def test_a_payload_format_indicator_paho_refuses_is_dropped_and_the_rest_kept(qos: int) -> None:
    body = publish_body(byte_property(PAYLOAD_FORMAT_INDICATOR, 7) + GOOD, qos)
    with pytest.raises(MQTTException):
        decoded(body, qos)  # what closed the connection
    result = without_refused_properties(body, qos)
    assert result is not None
    cleaned, dropped = result
    assert dropped == ["PayloadFormatIndicator=7"]
    props, payload = decoded(bytes(cleaned), qos)
    assert props.ResponseTopic == "requester/answers" and props.CorrelationData == b"c1"
    assert not hasattr(props, "PayloadFormatIndicator")
    assert payload == b'{"request_id":"r"}'


def test_a_property_given_twice_keeps_the_first() -> None:
    twice = text_property(CONTENT_TYPE, "application/json") + text_property(CONTENT_TYPE, "x/y")
    result = without_refused_properties(publish_body(twice + GOOD), 1)
    assert result is not None
    props, _ = decoded(bytes(result[0]), 1)
    assert props.ContentType == "application/json" and result[1] == ["ContentType='x/y'"]


@pytest.mark.parametrize(
    "body",
    [
        publish_body(byte_property(PAYLOAD_FORMAT_INDICATOR, 1) + GOOD),  # nothing refused
        publish_body(b""),  # no properties
        publish_body(bytes([0x7F, 0])),  # an unknown property: malformed, not lenient
        publish_body(byte_property(PAYLOAD_FORMAT_INDICATOR, 7))[:14],  # cut short
        b"\x00",
    ],
)
def test_anything_else_is_left_to_paho(body: bytes) -> None:
    assert without_refused_properties(body, 1) is None
