"""What ``MqttPublisher`` keeps: where it is (``State``), its counters, and each message it
accepted until the broker acknowledges it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from inspectd.contract.messages import OutgoingMessage


class State(enum.Enum):
    """Where the publisher is. NEW -> CONNECTING -> RESENDING -> OPEN, back to CONNECTING on a
    disconnect, STOPPED from ``stop()`` on (for good; it no longer counts as connected, even
    while the socket is still being closed)."""

    NEW = "new"  # start() not called yet
    CONNECTING = "connecting"  # started, no connection: messages wait in our FIFO
    RESENDING = "resending"  # connected, gate closed: paho still resends older messages
    OPEN = "open"  # connected, gate open: the sender hands messages to paho
    STOPPED = "stopped"  # stop() began refusing messages

    @property
    def connected(self) -> bool:
        return self in (State.RESENDING, State.OPEN)


@dataclass(slots=True)
class Counters:
    """Since start; ``stats()`` reports them in this order, under these names."""

    published: int = 0  # accepted by enqueue
    acked: int = 0
    refused: int = 0  # an MQTT 5 PUBACK with a failure reason code
    dropped: int = 0  # not accepted (queue full, stopped) or paho refused it
    expired: int = 0  # a reject past its deadline, not sent
    connects: int = 0
    skipped_offline: int = 0  # QoS 0 enqueued while not connected
    handler_errors: int = 0  # exceptions out of subscription handlers


@dataclass(slots=True, eq=False)
class Entry:
    """A message the publisher accepted; ``mid`` once handed to paho."""

    id: int
    message: OutgoingMessage
    mid: int | None = field(default=None)
