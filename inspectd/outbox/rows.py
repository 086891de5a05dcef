"""What the outbox stores and reads back: the message shapes and their checks (``checked`` runs
when a message is appended and again when a row is read back, since the file may have changed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from inspectd.contract.messages import set_flags
from inspectd.contract.topics import topic_problem
from inspectd.contract.verdict import Verdict


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or read, or the outbox is closed."""


class MessageLike(Protocol):
    """What ``append`` stores of a message."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def expires(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """A message to store. ``expires``: wall time after which it is not worth sending (a reject
    for a part that has left the diverter); the publisher turns it into MQTT 5 message expiry."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = "application/json"
    expires: float | None = None
    expires_mono: float | None = None  # the same deadline on the monotonic clock; it decides


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from the outbox; ``ack(seq, idx)`` deletes it."""

    seq: int
    idx: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None
    expires: float | None
    expires_mono: float | None = None  # this process's monotonic clock (rebased at open)


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
    messages: tuple[StoredMessage, ...]
    durable: bool = True
    created_mono: float | None = None  # this process's monotonic clock (rebased at open)
    quarantined: str | None = None  # why it is set aside (see the module docstring)


MessagesArg = Sequence[MessageLike] | Callable[[int], Iterable[MessageLike]]
Stored = tuple[str, bytes, int, int, str | None, float | None, float | None]  # checked


def checked(message: MessageLike) -> Stored:
    topic, payload, qos = message.topic, message.payload, message.qos
    problem = topic_problem(topic) if isinstance(topic, str) else "not text"
    if problem is not None:
        raise ValueError(f"cannot publish on topic {topic!r}: {problem}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if qos not in (0, 1, 2):
        raise ValueError(f"invalid QoS {qos!r}")
    topic.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    content_type = getattr(message, "content_type", None)
    if content_type is not None:
        content_type.encode("utf-8")
    expires = deadline(getattr(message, "expires", None))
    expires_mono = deadline(getattr(message, "expires_mono", None))
    return (
        topic,
        bytes(payload),
        qos,
        int(bool(message.retain)),
        content_type,
        expires,
        expires_mono,
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
    messages = []
    for *_, idx, topic, payload, qos, retain, content_type, expires, expires_mono in joined:
        m = StoredMessage(
            seq, idx, topic, payload, qos, bool(retain), content_type, expires, expires_mono
        )
        checked(m)
        if replayed:
            m = replace(m, payload=set_flags(payload, replayed=True))
        messages.append(m)
    return Row(
        seq,
        Verdict(kind),
        created,
        bool(replayed),
        tuple(messages),
        created_mono=created_mono,
        quarantined=quarantined,
    )
