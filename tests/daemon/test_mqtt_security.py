"""`inspectd run` against brokers with TLS and passwords (tests/support/secure_broker.py):
verdicts go out over TLS with a password from a file; a wrong password or an untrusted broker
certificate keeps the daemon up, retrying, and says why in its log and state_dir/health.json; a
TLS file that is not there is a config error (exit 2) naming the file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from inspectd.mqtt.broker import free_port

from support.daemon_process import Daemon
from support.paths import needs_bundle
from support.requester import Requester, request_station_config
from support.secure_broker import (
    make_pki,
    missing_tools,
    start_secure_mosquitto,
    write_password_file,
)
from support.station import BASE, STATUS, VERDICT, write_good_frames

pytestmark = [
    needs_bundle,
    pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or ""),
]

USER, PASSWORD = "inspectd", "s3cret-Pw"
WATCHER, WATCHER_PASSWORD = "watcher", "w4tch-Pw"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def password_file(tmp_path) -> Path:
    return write_password_file(tmp_path / "broker", {USER: PASSWORD, WATCHER: WATCHER_PASSWORD})


def daemon_config(tmp: Path, port: int, *, password: str | None = PASSWORD, **mqtt: Any) -> Path:
    """A free-running station (loop, 5 Hz) logging in as USER with the password from a file."""
    frames = write_good_frames(tmp / "frames")
    if password is not None:
        secret = tmp / "secrets" / "mqtt.password"
        secret.parent.mkdir()
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        mqtt = {"username": USER, "password_file": str(secret), **mqtt}
    return request_station_config(tmp, port, frames, camera={"rate_hz": 5}, mqtt=mqtt)


def read_health(tmp: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tmp / "state" / "health.json").read_text())
    except (OSError, ValueError):
        return None


def wait_health(tmp: Path, daemon: Daemon, ok: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = read_health(tmp)
        if health is not None and ok(health):
            return health
        assert daemon.running, daemon.tail()
        assert time.monotonic() < deadline, f"health.json never matched: {health}"
        time.sleep(0.1)


def test_verdicts_go_out_over_tls_with_a_password_file(tmp_path, pki, password_file):
    with start_secure_mosquitto(tmp_path / "broker", pki=pki, password_file=password_file) as b:
        config = daemon_config(tmp_path, b.port, tls={"ca_file": str(pki.ca_cert)})
        with Requester(
            b.host,
            b.port,
            [f"{BASE}/#"],
            ca_file=pki.ca_cert,
            username=WATCHER,
            password=WATCHER_PASSWORD,
        ) as sub:
            with Daemon(config) as daemon:
                verdicts = [m.json() for m in sub.wait(VERDICT, n=3, timeout=20)]
                assert [v["seq"] for v in verdicts[:3]] == [1, 2, 3]
                assert all(v["verdict"] in ("OK", "NG") for v in verdicts)
                assert sub.messages(STATUS)[0].json()["state"] == "online"
                health = wait_health(tmp_path, daemon, lambda h: h["mqtt"]["connected"])
                assert health["mqtt"]["error"] is None
                assert not any(p.startswith("mqtt_disconnected") for p in health["problems"])
                assert daemon.terminate() == 0, daemon.tail()
            sub.wait(lambda m: m.topic == STATUS and m.json()["state"] == "stopped")
        assert not daemon.events("mqtt.connect_refused")
        assert not daemon.events("mqtt.connect_failed")
        assert PASSWORD not in "\n".join(daemon.lines)  # never logged
        # the broker saw a TLS login as USER
        assert f"u'{USER}'" in b.log_tail(200), b.log_tail(200)


def test_a_wrong_password_keeps_the_daemon_up_retrying_and_says_why(tmp_path, password_file):
    with start_secure_mosquitto(tmp_path / "broker", password_file=password_file) as b:
        config = daemon_config(tmp_path, b.port, password="not-the-password")
        with Daemon(config) as daemon:
            refused = daemon.wait_event("mqtt.connect_refused", n=2, timeout=20)
            for event in refused:
                assert event["level"] == "error", event
                assert event["username"] == USER
            health = wait_health(tmp_path, daemon, lambda h: h["mqtt"]["error"] is not None)
            assert health["mqtt"]["enabled"] is True and health["mqtt"]["connected"] is False
            assert "refused" in health["mqtt"]["error"], health["mqtt"]
            assert health["state"] == "degraded"
            assert any(
                p.startswith("mqtt_disconnected: ") and "refused" in p for p in health["problems"]
            ), health["problems"]
            assert daemon.running
            assert daemon.terminate() == 0, daemon.tail()
        assert "not-the-password" not in "\n".join(daemon.lines)
        assert not daemon.events("mqtt.connected")


def test_a_broker_certificate_from_another_ca_is_a_logged_tls_failure(tmp_path, pki, password_file):
    with start_secure_mosquitto(tmp_path / "broker", pki=pki, password_file=password_file) as b:
        config = daemon_config(tmp_path, b.port, tls={"ca_file": str(pki.other_ca_cert)})
        with Daemon(config) as daemon:
            failed = daemon.wait_event("mqtt.connect_failed", n=1, timeout=20)[0]
            assert failed["level"] == "error", failed
            assert "certificate verify failed" in failed["error"].lower(), failed
            health = wait_health(tmp_path, daemon, lambda h: h["mqtt"]["error"] is not None)
            assert health["mqtt"]["connected"] is False
            assert "certificate verify failed" in health["mqtt"]["error"].lower(), health["mqtt"]
            assert any(p.startswith("mqtt_disconnected: ") for p in health["problems"])
            # still retrying
            daemon.wait_event("mqtt.connect_failed", n=2, timeout=20)
            assert daemon.terminate() == 0, daemon.tail()
        assert not daemon.events("mqtt.connected")


def test_a_tls_or_password_file_that_is_not_there_is_a_config_error(tmp_path):
    port = free_port()  # nothing listens: the daemon must not get as far as connecting
    missing_ca = tmp_path / "nowhere" / "broker-ca.pem"
    config = daemon_config(tmp_path / "ca", port, password=None, tls={"ca_file": str(missing_ca)})
    with Daemon(config) as daemon:
        assert daemon.wait(timeout=60) == 2, daemon.tail()
    err = "\n".join(daemon.lines)
    assert str(missing_ca) in err, err
    assert "No such file" in err, err

    missing_pw = tmp_path / "nowhere" / "mqtt.password"
    config = daemon_config(
        tmp_path / "pw", port, password=None, username=USER, password_file=str(missing_pw)
    )
    with Daemon(config) as daemon:
        assert daemon.wait(timeout=60) == 2, daemon.tail()
    err = "\n".join(daemon.lines)
    assert str(missing_pw) in err, err
