"""An MQTT 5 publisher on a plain socket, for packets paho's client refuses to build.

paho checks property values when they are set (a payload format indicator other than 0 or 1
raises), so a PUBLISH that a broker still relays (mosquitto does not check that value) is
written here byte by byte. Only what the tests need: CONNECT, QoS 1 PUBLISH, PUBACK.
"""

from __future__ import annotations

import socket
import struct

# MQTT 5 property identifiers (MQTT 5.0, 2.2.2.2)
PAYLOAD_FORMAT_INDICATOR = 0x01
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09


def varint(n: int) -> bytes:
    """A Variable Byte Integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def text(s: str) -> bytes:
    """A UTF-8 Encoded String (two-byte length, then the bytes)."""
    return binary(s.encode("utf-8"))


def binary(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def byte_property(ident: int, value: int) -> bytes:
    return bytes([ident, value])


def text_property(ident: int, value: str) -> bytes:
    return bytes([ident]) + text(value)


def binary_property(ident: int, value: bytes) -> bytes:
    return bytes([ident]) + binary(value)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


class RawPublisher:
    """Connected (MQTT 5, clean start) to host:port; ``publish`` sends QoS 1 and waits for the
    PUBACK, so the broker has taken each message before the next."""

    def __init__(self, host: str, port: int, client_id: str, timeout: float = 10.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._mid = 0
        flags, keepalive = 0x02, 60  # clean start
        body = text("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive) + varint(0)
        self._sock.sendall(_packet(0x10, body + text(client_id)))
        kind, payload = self._read()
        assert kind == 0x20 and payload[1] == 0, f"CONNACK refused: {payload!r}"

    def publish(self, topic: str, payload: bytes, properties: bytes = b"") -> None:
        self._mid = self._mid % 65535 + 1
        body = text(topic) + struct.pack("!H", self._mid) + varint(len(properties)) + properties
        self._sock.sendall(_packet(0x32, body + payload))  # PUBLISH, QoS 1
        kind, ack = self._read()
        assert kind == 0x40 and struct.unpack("!H", ack[:2])[0] == self._mid, (kind, ack)
        assert len(ack) < 3 or ack[2] < 0x80, f"PUBACK reason code {ack[2]:#x}"

    def _read(self) -> tuple[int, bytes]:
        first = self._recv(1)[0]
        length, shift = 0, 0
        while True:
            digit = self._recv(1)[0]
            length += (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                break
        return first & 0xF0, self._recv(length)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        try:
            self._sock.sendall(bytes([0xE0, 0]))  # DISCONNECT
        finally:
            self._sock.close()

    def __enter__(self) -> RawPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
