"""A stand-in MQTT 5 broker that answers every QoS 1 PUBLISH with the PUBACK reason code the
test chooses, for the failure codes no real broker here can be made to send.

mosquitto 2.0 answers a PUBLISH its ACL denies with 0x87 (Not authorized), which the tests use
mosquitto for; it never sends the others MQTT 5 allows on a PUBACK (0x80, 0x83, 0x90, 0x91, 0x97,
0x99; it does not check the payload format either). Just enough of the protocol for paho's
client: CONNECT/CONNACK, PUBLISH/PUBACK, PINGREQ/PINGRESP, DISCONNECT. It forwards nothing; it
records each PUBLISH with the code it answered.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

_CONNECT, _PUBLISH, _PINGREQ, _DISCONNECT = 1, 3, 12, 14


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    code: int  # the PUBACK reason code it was answered with


class PubackBroker:
    """Listens on 127.0.0.1 (a free port); ``code`` may be changed at any time."""

    def __init__(self, code: int = 0x00) -> None:
        self.code = code
        self.host = "127.0.0.1"
        self._server = socket.create_server((self.host, 0))
        self.port: int = self._server.getsockname()[1]
        self._cv = threading.Condition()
        self._received: list[Published] = []
        self._clients: list[socket.socket] = []
        threading.Thread(target=self._accept, name="puback-broker", daemon=True).start()

    def received(self) -> list[Published]:
        with self._cv:
            return list(self._received)

    def wait_for(
        self, check: Callable[[list[Published]], bool], timeout: float = 10.0
    ) -> list[Published]:
        """``received()`` once ``check(received())`` is true; AssertionError at the timeout."""
        with self._cv:
            if not self._cv.wait_for(lambda: check(self._received), timeout):
                raise AssertionError(f"not within {timeout} s; received: {self._received}")
            return list(self._received)

    def drop_clients(self) -> None:
        """Close every client connection, as a broker restart would: clients reconnect."""
        with self._cv:
            clients, self._clients = self._clients, []
        for conn in clients:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self.drop_clients()
        self._server.close()

    def __enter__(self) -> PubackBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._cv:
                self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while (packet := _read_packet(conn)) is not None:
                kind, flags, body = packet
                if kind == _CONNECT:
                    conn.sendall(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: success, no properties
                elif kind == _PUBLISH:
                    self._publish(conn, flags, body)
                elif kind == _PINGREQ:
                    conn.sendall(bytes([0xD0, 0]))
                elif kind == _DISCONNECT:
                    return
        except OSError:
            return  # dropped

    def _publish(self, conn: socket.socket, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 3
        (length,) = struct.unpack_from("!H", body)
        topic = body[2 : 2 + length].decode("utf-8")
        at = 2 + length
        packet_id = body[at : at + 2]
        at += 2 if qos else 0
        props, at = _varint(body, at)
        payload = body[at + props :]
        code = self.code
        with self._cv:
            self._received.append(Published(topic, payload, code))
            self._cv.notify_all()
        if qos == 1:  # PUBACK: packet id, reason code, no properties
            conn.sendall(bytes([0x40, 4]) + packet_id + bytes([code, 0]))


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """A Variable Byte Integer at ``at``: (value, the position after it)."""
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _read_packet(conn: socket.socket) -> tuple[int, int, bytes] | None:
    """(packet type, flags, body), or None once the client closed the connection."""
    first = _read(conn, 1)
    if first is None:
        return None
    length, shift = 0, 0
    while True:
        byte = _read(conn, 1)
        if byte is None:
            return None
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
        shift += 7
    body = _read(conn, length) if length else b""
    if body is None:
        return None
    return first[0] >> 4, first[0] & 0x0F, body


def _read(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
