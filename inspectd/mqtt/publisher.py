"""The MQTT transport, on paho-mqtt 2.x: connect, reconnect, hand messages over in order.

*What* is published (the v1 contract) is built in ``inspectd.contract``; this module is only
*how*: ``MqttPublisher.enqueue(message)`` hands an ``OutgoingMessage`` to the client and calls
``message.on_ack(reason_code)`` on PUBACK. ``inspectd.delivery`` feeds it the outbox's rows and
decides by that code what becomes of them (docs/mqtt.md, "Refused acknowledgements"); status,
health, stats, overlays and answers are enqueued directly.

Ordering. paho 2.2 keeps QoS 1 messages published while disconnected (``publish`` returns
``MQTT_ERR_NO_CONN`` but the message stays in its queue and is sent after the next CONNACK, also
before the first connect). But a message published between ``reconnect()`` opening the socket and
the end of paho's CONNACK handling is written at once, *before* the older messages paho resends
after the CONNACK; with a steady stream of publishes across a broker restart this was seen to
reorder. So this publisher holds messages in its own FIFO while not connected and hands them to
paho from one sender thread only through a "gate": the gate closes in ``on_disconnect`` (which
waits for a hand-over in progress) and opens after a reconnect only once paho holds none of our
older messages, or on the first PUBACK of the new connection (paho's resend is done by then).
"""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from inspectd.contract.messages import OutgoingMessage, remaining_s, status_message, status_payload
from inspectd.contract.topics import Topics, topic_problem
from inspectd.contract.vocabulary import StationState
from inspectd.mqtt import login
from inspectd.mqtt.login import Credentials
from inspectd.mqtt.paho_client import LenientClient, guarded, set_no_delay, subscribe_requests
from inspectd.mqtt.properties import REFUSED, PublishProperties, new_properties, reason_name
from inspectd.mqtt.publisher_state import Counters, Entry, State

log = structlog.get_logger(__name__)

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30
DEFAULT_MAX_QUEUED = 50_000  # messages not yet acknowledged, held in memory (until the outbox)
_PAHO_WINDOW = 1000  # most messages handed to paho and not yet acknowledged (mids are 16-bit)
_HANDOFF_BATCH = 100
_MAX_PAYLOAD = 268_435_455


class MqttPublisher:
    """QoS 1 publisher with Last Will, retained status, automatic reconnect and in-order delivery.

    ``publish_verdict``/``enqueue`` never wait for the network: messages go to an in-memory FIFO
    (bounded by ``max_queued``; a message that does not fit is logged with its label and counted
    in ``stats()["dropped"]``) and are handed to paho by a sender thread while connected.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        protocol: str,
        client_id: str,
        keepalive_s: int,
        topics: Topics,
        status_fields: dict[str, Any],
        max_queued: int = DEFAULT_MAX_QUEUED,
        credentials: Credentials | None = None,
        ack_timeout_s: float = 30.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.host = host
        self.port = port
        self.protocol = protocol
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.topics = topics
        self.status_fields = dict(status_fields)
        self.max_queued = max_queued
        self.credentials = credentials or Credentials()
        self.ack_timeout_s = ack_timeout_s  # mqtt.ack_timeout_s: no PUBACK for this long is a stall
        self._v5 = protocol == "5"

        self._client = LenientClient(  # paho's, tolerant of odd properties (paho_client.py)
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=PROTOCOLS[protocol],
            clean_session=None if self._v5 else True,
            reconnect_on_failure=True,
        )
        self._client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        self._client.max_queued_messages_set(0)  # unlimited in paho: the bound is ours
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_socket_open = set_no_delay
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._subscriptions: dict[str, Callable[[mqtt.MQTTMessage], None]] = {}
        login.apply(self._client, self.credentials)

        self._properties = PublishProperties()

        # Lock order: _handoff -> paho's locks -> _cv. Never call paho while holding _cv.
        self._cv = threading.Condition()
        self._handoff = threading.Lock()
        self._backlog: deque[Entry] = deque()  # accepted, not yet handed to paho
        self._outstanding: dict[int, Entry] = {}  # accepted, not yet acknowledged; in id order
        self._by_mid: dict[int, Entry] = {}  # handed to paho, not yet acknowledged
        self._early_acks: dict[int, int] = {}  # PUBACK reason codes that beat the mid
        self._status_mids: set[int] = set()  # "online" publishes made in on_connect
        self._in_paho = 0
        # Is the publisher moving? QoS 1/2 messages handed to paho and not yet acknowledged, and
        # when the broker last acknowledged one (or the wait began, or the connection came up).
        # QoS 0 does not count: paho "completes" it once written to the socket, which a broker
        # that stopped reading, or a paho whose network thread died, still lets happen.
        self._awaiting_ack = 0
        self._progress_at = time.monotonic()
        self._next_id = 0
        self._state = State.NEW  # changed under _cv
        self._sender: threading.Thread | None = None
        self._counts = Counters()
        self._connect_failures = 0
        self._error: str | None = None  # why the last connection attempt failed
        self._attempted = threading.Event()  # the first connection attempt has ended

    # -- public API -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._state.connected

    @property
    def state(self) -> State:
        return self._state

    @property
    def connects(self) -> int:
        """How many connections came up since start (a change means a reconnect)."""
        return self._counts.connects

    def threads(self) -> dict[str, threading.Thread | None]:
        """The long-lived threads, for the station's thread watch: the sender and paho's
        network thread (an exception out of a paho callback ends it; issue 15)."""
        return {"mqtt-sender": self._sender, "mqtt-network": self._client._thread}

    @property
    def connect_attempted(self) -> bool:
        """True once the first connection attempt has ended: connected, refused or failed."""
        return self._attempted.is_set()

    def wait_connect_attempt(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the first connection attempt to end; its result."""
        return self._attempted.wait(timeout)

    def start(self) -> None:
        with self._cv:
            if self._state is not State.NEW:
                raise RuntimeError("MqttPublisher.start() called twice")
            self._state = State.CONNECTING
        self._set_will()
        if self._v5:
            self._client.connect_async(self.host, self.port, self.keepalive_s, clean_start=True)
        else:
            self._client.connect_async(self.host, self.port, self.keepalive_s)
        self._sender = threading.Thread(
            target=self._sender_main, name=f"mqtt-sender-{self.client_id}", daemon=True
        )
        self._sender.start()
        self._client.loop_start()
        log.info(
            "mqtt.starting",
            host=self.host,
            port=self.port,
            protocol=self.protocol,
            client_id=self.client_id,
        )

    def subscribe(
        self,
        topic_filter: str,
        handler: Callable[[mqtt.MQTTMessage], None],
        on_crash: Callable[[mqtt.MQTTMessage, BaseException], None] | None = None,
    ) -> None:
        """Subscribe (QoS 1) on every connect; ``handler`` runs on paho's network thread and
        must not block. Call before ``start``. An exception out of ``handler`` is logged,
        counted (``stats()["handler_errors"]``) and given to ``on_crash`` (to answer it)."""
        self._subscriptions[topic_filter] = handler
        self._client.message_callback_add(
            topic_filter, guarded(handler, on_crash, self._count_handler_error)
        )

    def _count_handler_error(self) -> None:
        with self._cv:
            self._counts.handler_errors += 1

    def ack_wait_s(self) -> float:
        """Seconds the publisher has been connected with QoS 1 messages awaiting a PUBACK and
        none arrived; 0 when nothing waits or while disconnected (reconnecting is progress)."""
        with self._cv:
            if not self._state.connected or self._awaiting_ack == 0:
                return 0.0
            return max(0.0, time.monotonic() - self._progress_at)

    def stalled_s(self) -> float | None:
        """Seconds without a PUBACK while connected and waiting for one, once that is over
        ``ack_timeout_s``; else None. A publisher whose network thread died (issue 15: an
        exception out of a paho callback) or a broker that stopped reading keeps the TCP
        connection, so neither "connected" nor the broker's Last Will shows it."""
        waited = self.ack_wait_s()
        return round(waited, 1) if waited > self.ack_timeout_s else None

    def problems(self) -> list[str]:
        """``mqtt_disconnected`` (paho reconnects) or ``mqtt_stalled`` (see ``stalled_s``)."""
        with self._cv:
            connected, error, awaiting = self._state.connected, self._error, self._awaiting_ack
        if not connected:
            return [f"mqtt_disconnected: {error or 'connecting'}"]
        stalled = self.stalled_s()
        if stalled is None:
            return []
        return [
            f"mqtt_stalled: {awaiting} messages wait for the broker's PUBACK, none for "
            f"{stalled:.0f} s (mqtt.ack_timeout_s {self.ack_timeout_s:g}); watchdog pings "
            "withheld"
        ]

    def set_status_fields(self, **fields: Any) -> None:
        """Change fields of the status message (the product after a switch) and publish
        ``online`` with them again; the Last Will takes them at the next connect."""
        self.status_fields.update(fields)
        if self._state.connected:
            self.enqueue(status_message(self.topics, StationState.ONLINE, self.status_fields))

    def enqueue(self, message: OutgoingMessage) -> bool:
        """Queue one message for publishing, in order. False (and an error logged) if it cannot
        be queued: the queue is full or the publisher is stopped."""
        if message.qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {message.qos}")
        problem = topic_problem(message.topic)
        if problem is not None:
            raise ValueError(f"cannot publish on {message.topic!r}: {problem}")
        if len(message.payload) > _MAX_PAYLOAD:
            raise ValueError(f"payload of {len(message.payload)} bytes is too large for MQTT")
        with self._cv:
            if message.qos == 0 and not self._state.connected:
                # QoS 0 (overlays, stats) is a live view: not worth memory during an outage
                self._counts.skipped_offline += 1
                return False
            reason = None
            if self._state is State.STOPPED:
                reason = "publisher stopped"
            elif len(self._outstanding) >= self.max_queued:
                reason = "queue full"
            if reason is None:
                entry = Entry(self._next_id, message)
                self._next_id += 1
                self._outstanding[entry.id] = entry
                self._backlog.append(entry)
                self._counts.published += 1
                self._cv.notify_all()
                return True
            self._counts.dropped += 1
        log.error(
            "mqtt.publish_dropped",
            topic=message.topic,
            label=message.label,
            reason=reason,
            max_queued=self.max_queued,
            connected=self._state.connected,
        )
        return False

    def wait_published(self, timeout: float) -> bool:
        """True once every message accepted so far has been acknowledged by the broker."""
        with self._cv:
            target = self._next_id

            def done() -> bool:
                return not self._outstanding or next(iter(self._outstanding)) >= target

            return self._cv.wait_for(done, timeout=max(0.0, timeout))

    def stop(self, timeout: float = 5.0) -> None:
        """Publish retained ``stopped``, wait up to ``timeout`` for acknowledgements, disconnect
        cleanly (the broker does not send the Last Will) and stop the network thread."""
        if self._state in (State.NEW, State.STOPPED):
            return
        deadline = time.monotonic() + timeout
        self.enqueue(status_message(self.topics, StationState.STOPPED, self.status_fields))
        self.wait_published(timeout)
        with self._cv:
            self._state = State.STOPPED  # refuses new messages and ends the sender thread
            self._cv.notify_all()
            lost = list(self._outstanding.values())
        if self._sender is not None:
            self._sender.join(timeout=max(0.5, deadline - time.monotonic()))
        if lost:
            log.error(
                "mqtt.stop_unacknowledged",
                count=len(lost),
                labels=[e.message.label for e in lost[:50]],
                detail="not acknowledged before stop; verdicts stay in the outbox and go out at "
                "the next start",
            )
        self._client.disconnect()
        self._client.loop_stop()
        log.info("mqtt.stopped", host=self.host, port=self.port, **self._stats_locked())

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return self._stats_locked()

    # -- internals ------------------------------------------------------------------------------

    def _stats_locked(self) -> dict[str, Any]:
        return {
            **asdict(self._counts),
            "pending": len(self._outstanding),
            "backlog": len(self._backlog),
            "in_flight": self._in_paho,
            "awaiting_ack": self._awaiting_ack,
            "connected": self._state.connected,
            "error": self._error,
        }

    def _status_props(self, packet_type: int) -> Properties | None:
        return new_properties("application/json", packet_type) if self._v5 else None

    def _set_will(self) -> None:
        # ts: when the connection that died was opened (the will is fixed at CONNECT time)
        self._client.will_set(
            self.topics.status,
            status_payload(StationState.OFFLINE, self.status_fields),
            qos=1,
            retain=True,
            properties=self._status_props(PacketTypes.WILLMESSAGE),
        )

    def _sender_main(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: (
                        self._state is State.STOPPED
                        or (
                            self._state is State.OPEN
                            and self._backlog
                            and self._in_paho < _PAHO_WINDOW
                        )
                    )
                )
                if self._state is State.STOPPED:
                    return
            with self._handoff:
                for _ in range(_HANDOFF_BATCH):
                    with self._cv:
                        if not (
                            self._state is State.OPEN
                            and self._backlog
                            and self._in_paho < _PAHO_WINDOW
                        ):
                            break
                        entry = self._backlog.popleft()
                        self._in_paho += 1
                        if entry.message.qos > 0:
                            if self._awaiting_ack == 0:
                                self._progress_at = time.monotonic()  # the wait begins now
                            self._awaiting_ack += 1
                    self._hand_to_paho(entry)

    def _hand_to_paho(self, entry: Entry) -> None:
        m = entry.message
        left = remaining_s(m)
        if left is not None and left <= 0:
            # A reject for a part that has left the diverter: sending it could divert the wrong
            # part. Done with, as if acknowledged (the outbox deletes it), and logged.
            log.warning("mqtt.expired_not_sent", topic=m.topic, label=m.label)
            with self._cv:
                self._complete_locked(entry, 0, expired=True)
            self._after_ack(entry, 0)
            return
        props = self._properties.of(m) if self._v5 else None
        error: str | None = None
        try:
            info = self._client.publish(m.topic, m.payload, m.qos, m.retain, props)
        except (ValueError, TypeError) as exc:  # checked in enqueue; should not happen
            error = str(exc)
        else:
            # NO_CONN: the connection dropped since the gate opened; paho keeps the message and
            # sends it after the reconnect, ahead of anything newer (see the module docstring).
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                error = mqtt.error_string(info.rc)
        if error is not None:
            with self._cv:
                self._in_paho -= 1
                if m.qos > 0:
                    self._awaiting_ack -= 1
                self._outstanding.pop(entry.id, None)
                self._counts.dropped += 1
                self._cv.notify_all()
            log.error("mqtt.publish_dropped", topic=m.topic, label=m.label, reason=error)
            return
        with self._cv:
            code = self._early_acks.pop(info.mid, None)
            if code is None:
                entry.mid = info.mid
                self._by_mid[info.mid] = entry
                return
            self._complete_locked(entry, code)
        self._after_ack(entry, code)

    def _complete_locked(self, entry: Entry, code: int, *, expired: bool = False) -> None:
        self._in_paho -= 1
        if entry.message.qos > 0:
            self._awaiting_ack -= 1
            if not expired:  # the broker's PUBACK (not an expired reject): the publisher moves
                self._progress_at = time.monotonic()
        self._outstanding.pop(entry.id, None)
        if expired:
            self._counts.expired += 1
        elif code < REFUSED:
            self._counts.acked += 1
        else:
            self._counts.refused += 1
        self._cv.notify_all()

    def _after_ack(self, entry: Entry, code: int) -> None:
        m = entry.message
        if code >= REFUSED and m.on_ack is None:  # delivery logs its own, once for many
            log.error(
                "mqtt.publish_refused", topic=m.topic, label=m.label, reason=reason_name(code)
            )
        if m.on_ack is not None:
            try:
                m.on_ack(code)
            except Exception:
                log.exception("mqtt.on_ack_failed", topic=m.topic, label=m.label)

    # paho callbacks: all on paho's network thread

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._set_will()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            error = f"broker {self.host}:{self.port} refused the connection: {reason_code}"
            with self._cv:
                self._error = error
            log.error(
                "mqtt.connect_refused",
                host=self.host,
                port=self.port,
                reason_code=str(reason_code),
                username=self.credentials.username,
                detail="check the username, password and client certificate; retrying",
            )
            self._attempted.set()
            return
        for topic_filter in self._subscriptions:
            subscribe_requests(client, topic_filter, v5=self._v5)  # no retained messages
        info = client.publish(
            self.topics.status,
            status_payload(StationState.ONLINE, self.status_fields),
            qos=1,
            retain=True,
            properties=self._status_props(PacketTypes.PUBLISH),
        )
        with self._cv:
            if self._state is not State.STOPPED:  # a reconnect while stop() closes: stays so
                # paho holds none of our older messages: nothing for new ones to overtake
                self._state = State.OPEN if self._in_paho == 0 else State.RESENDING
            self._progress_at = time.monotonic()  # a fresh connection: paho resends what waits
            self._counts.connects += 1
            self._connect_failures = 0
            self._error = None
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._status_mids.add(info.mid)
            self._cv.notify_all()
            pending = len(self._outstanding)
        log.info(
            "mqtt.connected",
            host=self.host,
            port=self.port,
            protocol=self.protocol,
            reason_code=str(reason_code),
            session_present=bool(flags.session_present),
            pending=pending,
        )
        self._attempted.set()  # after the log line: readiness follows what the log says

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` block: the exception is still current
        exc = sys.exc_info()[1]
        error = f"cannot connect to {self.host}:{self.port}: {exc or 'connection failed'}"
        tls = isinstance(exc, ssl.SSLError)
        with self._cv:
            self._connect_failures += 1
            failures = self._connect_failures
            pending = len(self._outstanding)
            self._error = error
        (log.error if tls else log.warning)(
            "mqtt.connect_failed",
            host=self.host,
            port=self.port,
            attempt=failures,
            pending=pending,
            error=error,
            detail="TLS: check ca_file and the broker's certificate" if tls else None,
        )
        self._attempted.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Waiting for _handoff: a hand-over in progress lands in paho before the gate closes, so
        # it is resent in order after the reconnect (see the module docstring).
        with self._handoff, self._cv:
            was_connected = self._state.connected
            stopping = self._state is State.STOPPED
            if not stopping:
                self._state = State.CONNECTING  # the gate closes; paho reconnects
            pending = len(self._outstanding)
        fields = {
            "host": self.host,
            "port": self.port,
            "reason_code": str(reason_code),
            "from_broker": bool(flags.is_disconnect_packet_from_server),
            "pending": pending,
        }
        if stopping:
            log.info("mqtt.disconnected", **fields)
        elif was_connected:
            log.warning("mqtt.disconnected", **fields)
        else:
            log.warning("mqtt.connect_lost", **fields)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        code = reason_code.value
        with self._cv:
            if self._state is State.RESENDING:
                # paho resends its older messages while handling CONNACK, before any PUBACK is
                # read: from here on new messages queue up behind them
                self._state = State.OPEN
                self._cv.notify_all()
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                self._progress_at = time.monotonic()
                entry = None
            else:
                entry = self._by_mid.pop(mid, None)
                if entry is None:
                    self._early_acks[mid] = code
                else:
                    self._complete_locked(entry, code)
        if entry is not None:
            self._after_ack(entry, code)
        elif code >= REFUSED:
            log.error("mqtt.publish_refused", mid=mid, reason=reason_name(code))
