"""Answers to what arrives on …/trigger and …/cmd: replies and …/error messages.

MQTT 5 requests may carry a response topic and correlation data; answers go to that topic and
echo the correlation data, so a requester can match them. MQTT 3.1.1 has neither: replies then
go to a fixed topic the requester subscribes to (``ReplyTo.fallback_topic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from inspectd.messages import error_message, reply_message
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.mqtt.topics import Topics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where the answer to one request goes."""

    source_topic: str  # the topic the request arrived on
    response_topic: str | None = None
    correlation_data: bytes | None = None

    @classmethod
    def of(cls, msg: mqtt.MQTTMessage) -> ReplyTo:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if response is not None and ("+" in response or "#" in response or not response):
            response = None  # not a topic one can publish on: answer on the fallback topic
        return cls(msg.topic, response, bytes(correlation) if correlation is not None else None)


def reply(
    publisher: MqttPublisher, to: ReplyTo, fallback_topic: str, payload: dict[str, Any]
) -> None:
    """The answer to a request, on its response topic (else ``fallback_topic``), QoS 1."""
    publisher.enqueue(
        reply_message(
            to.response_topic or fallback_topic,
            payload,
            source_topic=to.source_topic,
            correlation_data=to.correlation_data,
        )
    )


def publish_error(
    publisher: MqttPublisher,
    topics: Topics,
    to: ReplyTo,
    code: str,
    detail: str,
    **fields: Any,
) -> None:
    """A refused request, on …/error with the correlation data echoed; logged too."""
    log.warning("mqtt.request_refused", topic=to.source_topic, code=code, detail=detail, **fields)
    publisher.enqueue(
        error_message(
            topics,
            code,
            detail,
            source_topic=to.source_topic,
            correlation_data=to.correlation_data,
            **fields,
        )
    )
