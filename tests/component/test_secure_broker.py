"""The secure_broker helpers against a real paho-mqtt 2.x client (MQTT 5 over TLS / passwords)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from inspectd.mqtt.broker import LocalBroker

from support.secure_broker import (
    Pki,
    make_pki,
    missing_tools,
    start_secure_mosquitto,
    write_password_file,
)

TIMEOUT_S = 5.0
USER, PASSWORD = "inspectd", "s3cret pass"


@pytest.fixture(autouse=True)
def _tools() -> None:
    reason = missing_tools()
    if reason is not None:
        pytest.skip(f"secure broker tests need the mosquitto and openssl binaries; {reason}")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    return write_password_file(tmp_path, {USER: PASSWORD, "other": "other-password"})


class Probe:
    """A paho client (MQTT 5, no automatic reconnect) that records what the broker answered."""

    def __init__(
        self,
        *,
        ca_cert: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"secure-test-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if ca_cert is not None:
            self.client.tls_set(
                ca_certs=str(ca_cert),
                certfile=str(client_cert) if client_cert else None,
                keyfile=str(client_key) if client_key else None,
            )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: ReasonCode | None = None
        self.disconnect_reason: ReasonCode | None = None
        self.answered = threading.Event()  # CONNACK or disconnect, whichever comes first
        self.subscribed = threading.Event()
        self.messages: list[mqtt.MQTTMessage] = []
        self.received = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = self._on_message
        self._looping = False

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.connack = reason_code
        self.answered.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.disconnect_reason = reason_code
        self.answered.set()

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        self.messages.append(message)
        self.received.set()

    def connect(self, broker: LocalBroker) -> ReasonCode | None:
        """Connect (raises what the TLS handshake raises) and wait for the broker's answer: the
        CONNACK's reason code, or None when the connection closed without a CONNACK."""
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        self._looping = True
        assert self.answered.wait(TIMEOUT_S), f"no answer within {TIMEOUT_S} s"
        return self.connack

    def close(self) -> None:
        self.client.disconnect()
        if self._looping:
            self.client.loop_stop()


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def probe(probes: list[Probe], **kwargs) -> Probe:
    made = Probe(**kwargs)
    probes.append(made)
    return made


def assert_round_trip(p: Probe, topic: str) -> None:
    p.client.subscribe(topic, qos=1)
    assert p.subscribed.wait(TIMEOUT_S), "no SUBACK"
    p.client.publish(topic, b"hello over tls", qos=1).wait_for_publish(TIMEOUT_S)
    assert p.received.wait(TIMEOUT_S), "the published message did not come back"
    assert [(m.topic, m.payload) for m in p.messages] == [(topic, b"hello over tls")]


def test_tls_and_password_connect_and_round_trip(
    tmp_path: Path, pki: Pki, password_file: Path, probes: list[Probe]
) -> None:
    with start_secure_mosquitto(tmp_path, pki=pki, password_file=password_file) as broker:
        p = probe(probes, ca_cert=pki.ca_cert, username=USER, password=PASSWORD)
        reason = p.connect(broker)
        assert reason is not None and not reason.is_failure, broker.log_tail()
        assert reason == "Success"
        assert isinstance(p.client.socket(), ssl.SSLSocket)
        assert_round_trip(p, "inspectd/test/secure")


@pytest.mark.parametrize(
    ("username", "password"),
    [(USER, "wrong password"), ("nobody", PASSWORD), (None, None)],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_bad_credentials_are_refused(
    tmp_path: Path,
    pki: Pki,
    password_file: Path,
    probes: list[Probe],
    username: str | None,
    password: str | None,
) -> None:
    with start_secure_mosquitto(tmp_path, pki=pki, password_file=password_file) as broker:
        p = probe(probes, ca_cert=pki.ca_cert, username=username, password=password)
        reason = p.connect(broker)
        assert reason is not None, "the broker closed the connection without a CONNACK"
        assert reason.is_failure
        assert reason in ("Bad user name or password", "Not authorized"), str(reason)


def test_password_without_tls(tmp_path: Path, password_file: Path, probes: list[Probe]) -> None:
    with start_secure_mosquitto(tmp_path, password_file=password_file) as broker:
        good = probe(probes, username=USER, password=PASSWORD)
        assert good.connect(broker) == "Success"
        assert not isinstance(good.client.socket(), ssl.SSLSocket)
        bad = probe(probes, username=USER, password="nope")
        assert bad.connect(broker) in ("Bad user name or password", "Not authorized")


def test_plain_broker_without_options(tmp_path: Path, probes: list[Probe]) -> None:
    with start_secure_mosquitto(tmp_path) as broker:
        p = probe(probes)
        assert p.connect(broker) == "Success"
        assert_round_trip(p, "inspectd/test/plain")


def test_unrelated_ca_fails_the_handshake(
    tmp_path: Path, pki: Pki, password_file: Path, probes: list[Probe]
) -> None:
    with start_secure_mosquitto(tmp_path, pki=pki, password_file=password_file) as broker:
        p = probe(probes, ca_cert=pki.other_ca_cert, username=USER, password=PASSWORD)
        with pytest.raises(ssl.SSLCertVerificationError) as raised:
            p.client.connect(broker.host, broker.port)
        # mosquitto (OpenSSL's automatic chain building) sends its CA along with the server
        # certificate, so OpenSSL reports 19 "self-signed certificate in certificate chain"; 20
        # "unable to get local issuer certificate" is what a server sending only its leaf gets.
        assert raised.value.verify_code in (19, 20), raised.value.verify_message
        assert p.connack is None


def test_plain_client_cannot_talk_to_tls_listener(
    tmp_path: Path, pki: Pki, probes: list[Probe]
) -> None:
    with start_secure_mosquitto(tmp_path, pki=pki) as broker:
        p = probe(probes)  # no tls_set: a plain MQTT CONNECT to the TLS port
        try:
            reason = p.connect(broker)
        except OSError:
            return
        assert reason is None, f"a plain client got a CONNACK from the TLS listener: {reason}"


def test_require_certificate(tmp_path: Path, pki: Pki, probes: list[Probe]) -> None:
    with start_secure_mosquitto(tmp_path, pki=pki, require_certificate=True) as broker:
        with_cert = probe(
            probes, ca_cert=pki.ca_cert, client_cert=pki.client_cert, client_key=pki.client_key
        )
        assert with_cert.connect(broker) == "Success", broker.log_tail()
        assert_round_trip(with_cert, "inspectd/test/mtls")

        without_cert = probe(probes, ca_cert=pki.ca_cert)
        # With TLS 1.2 the server's refusal ends the handshake, inside connect(). With TLS 1.3
        # (what client and mosquitto agree on here) the client's side of the handshake is done
        # before the server checks the client certificate: connect() returns and the server's
        # alert closes the connection before any CONNACK.
        try:
            reason = without_cert.connect(broker)
        except ssl.SSLError:
            return
        assert reason is None, f"connected without a client certificate: {reason}"
        assert without_cert.disconnect_reason is not None
        assert without_cert.disconnect_reason.is_failure


def test_restart_keeps_the_secure_config(
    tmp_path: Path, pki: Pki, password_file: Path, probes: list[Probe]
) -> None:
    with start_secure_mosquitto(tmp_path, pki=pki, password_file=password_file) as broker:
        port = broker.port
        broker.stop()
        assert not broker.running
        broker.restart()
        assert broker.running and broker.port == port
        good = probe(probes, ca_cert=pki.ca_cert, username=USER, password=PASSWORD)
        assert good.connect(broker) == "Success"
        bad = probe(probes, ca_cert=pki.ca_cert, username=USER, password="nope")
        assert bad.connect(broker) in ("Bad user name or password", "Not authorized")
    assert not broker.running
    assert not broker.workdir.exists()
    assert (tmp_path / "mosquitto.conf").is_file()  # the copy survives for debugging
