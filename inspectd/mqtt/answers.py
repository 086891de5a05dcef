"""Answers to what arrives on …/trigger and …/cmd: replies and …/error messages.

MQTT 5 requests may carry a response topic and correlation data; answers go to that topic and
echo the correlation data, so a requester can match them. MQTT 3.1.1 has neither: replies then
go to a fixed topic the requester subscribes to (``ReplyTo.fallback_topic``).

Before its payload is read, a request is refused (``refusal``) when it came from the broker's
store of retained messages (it would run again at every connect: issue 31) or names a response
topic the station does not publish on: one inside its own base topic (an answer there became
the station's ``…/status``), or one no one can publish on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from inspectd.contract.messages import bound_echoes, error_message, reply_message
from inspectd.contract.topics import Topics, topic_problem
from inspectd.contract.vocabulary import ErrorCode
from inspectd.mqtt.publisher import MqttPublisher

log = structlog.get_logger(__name__)

RETAINED = (
    "a retained message, from the broker's store (at a connect or reconnect): requests are "
    "never run from there; clear it by publishing an empty retained message on this topic"
)


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where the answer to one request goes."""

    source_topic: str  # the topic the request arrived on
    response_topic: str | None = None
    correlation_data: bytes | None = None
    refused: str | None = None  # why the response topic the request named is not answered on

    @classmethod
    def of(cls, msg: mqtt.MQTTMessage, topics: Topics) -> ReplyTo:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        refused = None if response is None else _response_topic_problem(response, topics)
        return cls(
            msg.topic,
            None if refused is not None else response,  # nothing ever goes to a refused one
            bytes(correlation) if correlation is not None else None,
            refused,
        )


def _response_topic_problem(topic: str, topics: Topics) -> str | None:
    why = topic_problem(topic)
    if why is None and topics.contains(topic):
        why = f"inside this station's base topic {topics.base}, where only the station publishes"
    return None if why is None else f"response topic refused ({why}): {topic!r}"


def refusal(msg: mqtt.MQTTMessage, to: ReplyTo) -> tuple[ErrorCode, str] | None:
    """``(code, detail)`` for a request refused whatever its payload, else None."""
    if msg.retain:  # only the broker's store sets it (retain-as-published is off)
        return ErrorCode.RETAINED, RETAINED
    if to.refused is not None:
        return ErrorCode.INVALID_REQUEST, to.refused
    return None


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
    """A refused request, on …/error with the correlation data echoed; logged too (bounded as
    the answer is: a 1 MiB field is not a 1 MiB log line)."""
    logged, _ = bound_echoes({"topic": to.source_topic, "detail": detail, **fields})
    log.warning("mqtt.request_refused", code=code, **logged)
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
