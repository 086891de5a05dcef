"""What the outbox stores and reads back: the message shapes and their checks (``checked`` runs
when a message is appended and again when a row is read back, since the file may have changed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from inspectd.contract.messages import OutgoingMessage, set_flags
from inspectd.contract.topics import topic_problem
from inspectd.contract.verdict import Verdict


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or read, or the outbox is closed."""


@dataclass(frozen=True, slots=True)
class Row:
    """One verdict waiting for its PUBACKs, with the messages not yet acknowledged, in order.

    ``replayed``: an earlier process stored it and did not see it acknowledged (see
    ``Outbox.mark_replayed``); its JSON payloads with a ``"replayed"`` key read back with
    ``"replayed": true``. ``durable``: False for a verdict kept in memory because the disk
    failed (its payloads say ``"durable": false``)."""

    seq: int
    kind: Verdict
    created: float
    replayed: bool
    messages: dict[int, OutgoingMessage]  # by their index in the row (the acks name it), in order
    durable: bool = True
    created_mono: float | None = None  # this process's monotonic clock (rebased at open)
    quarantined: str | None = None  # why it is set aside (see the module docstring)


MessagesArg = Sequence[OutgoingMessage] | Callable[[int], Iterable[OutgoingMessage]]
Stored = tuple[str, bytes, int, int, str | None, float | None, float | None]  # checked


def checked(message: OutgoingMessage) -> Stored:
    topic, payload, qos = message.topic, message.payload, message.qos
    problem = topic_problem(topic) if isinstance(topic, str) else "not text"
    if problem is not None:
        raise ValueError(f"cannot publish on topic {topic!r}: {problem}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if qos not in (0, 1, 2):
        raise ValueError(f"invalid QoS {qos!r}")
    topic.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    content_type = message.content_type
    if content_type is not None:
        content_type.encode("utf-8")
    expires = deadline(message.expires)
    expires_mono = deadline(message.expires_mono)
    return (
        topic,
        bytes(payload),
        qos,
        int(bool(message.retain)),
        content_type,
        expires,
        expires_mono,
    )


def message_of(stored: Stored) -> OutgoingMessage:
    """A stored message as the publisher takes it."""
    topic, payload, qos, retain, content_type, expires, expires_mono = stored
    return OutgoingMessage(
        topic,
        payload,
        qos,
        bool(retain),
        content_type=content_type,
        expires=expires,
        expires_mono=expires_mono,
    )


def deadline(value: Any) -> float | None:
    # checked here: a bad value raising inside the transaction would cost the whole batch
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"expiry must be finite, got {value!r}")
    return value


def key_blob(key: str) -> bytes:
    # file names that are not UTF-8 arrive with surrogate escapes; a BLOB keeps them exactly
    return key.encode("utf-8", "surrogateescape")


def row_from(joined: list[tuple[Any, ...]]) -> Row:
    """One verdict read back with its messages (``schema.ROWS_SQL``' lines for it). Anything
    wrong with what is stored raises here, where it costs that row only, not in the publisher:
    the checks of ``append`` again, since the file may have changed since."""
    seq, kind, created, replayed, created_mono, quarantined, first_idx, *_ = joined[0]
    if first_idx is None:  # LEFT JOIN: no message (each acknowledgement deletes its verdict)
        raise ValueError("no message left to send")
    messages = {}
    for *_, idx, topic, payload, qos, retain, content_type, expires, expires_mono in joined:
        m = message_of((topic, payload, qos, retain, content_type, expires, expires_mono))
        checked(m)
        if replayed:
            m = replace(m, payload=set_flags(payload, replayed=True))
        messages[idx] = m
    return Row(
        seq,
        Verdict(kind),
        created,
        bool(replayed),
        messages,
        created_mono=created_mono,
        quarantined=quarantined,
    )
