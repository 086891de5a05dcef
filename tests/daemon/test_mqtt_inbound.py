"""Issue 31, items 5 to 7: what arrives on …/trigger and …/cmd/<name>/set besides the payload.

The real daemon and a private mosquitto, as in test_requests.py. Retained requests are never
run (item 5); a response topic inside the station's base is refused, a 1 MiB product name is an
answered validation error and what an answer echoes is bounded (item 6); a PUBLISH with an MQTT 5
property value that paho refuses (payload format indicator 7, which mosquitto relays) no longer
costs the connection (item 7).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspectd.mqtt.broker import LocalBroker, find_mosquitto

from support.daemon_process import Daemon
from support.mqtt_client import Received
from support.paths import needs_bundle
from support.raw_mqtt import (
    CORRELATION_DATA,
    PAYLOAD_FORMAT_INDICATOR,
    RESPONSE_TOPIC,
    RawPublisher,
    binary_property,
    byte_property,
    text_property,
)
from support.requester import (
    Requester,
    Station,
    correlation,
    request_station_config,
    stop_cleanly,
    wait_online,
)
from support.station import BASE, ERROR, PERSISTENT, STATUS, TRIGGER, VERDICT, write_good_frames

pytestmark = needs_bundle

PRODUCT_SET = f"{BASE}/cmd/product/set"
RELOAD_SET = f"{BASE}/cmd/reload_thresholds/set"
MIB = 1 << 20
ECHO_BOUND = 2048  # bytes: an error answer that echoes 1 MiB of input stays under this


def _skip_without_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")


def _config(tmp: Path, port: int, **mqtt: Any) -> Path:
    return request_station_config(
        tmp, port, write_good_frames(tmp / "frames"), camera={"trigger": "mqtt"}, mqtt=mqtt
    )


def _verdict_of(rq: Requester, request_id: str) -> dict[str, Any]:
    def match(m: Received) -> bool:
        return m.topic == VERDICT and m.json()["request_id"] == request_id

    return rq.wait(match, timeout=30)[0].json()


def _refused(daemon: Daemon, code: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events("mqtt.request_refused") if e.get("code") == code]


# -- item 5: retained requests ------------------------------------------------------------------


@pytest.fixture
def persistent_broker() -> Iterator[LocalBroker]:
    """Keeps retained messages across its restarts (mosquitto.db in its work folder)."""
    _skip_without_mosquitto()
    with LocalBroker.start_mosquitto(extra_conf=PERSISTENT) as broker:
        yield broker


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_retained_triggers_and_commands_are_never_run_at_start_or_at_a_reconnect(
    persistent_broker, tmp_path, protocol
):
    """MQTT 5: subscribed with retain handling 2, the broker never sends them. 3.1.1 has no such
    option: a message the broker hands over with the retain flag set comes from its store, and
    is refused on …/error as ``retained`` (at every connect), never run."""
    b = persistent_broker
    config = _config(tmp_path, b.port, protocol=protocol)
    with Requester(b.host, b.port, [VERDICT, STATUS]) as rq:
        # on the broker before the daemon comes: what it is offered when it subscribes
        rq.publish(TRIGGER, {"request_id": "stale-1", "part_id": "p-stale"}, retain=True)
        rq.publish(PRODUCT_SET, {"product": "button"}, retain=True)
        with Daemon(config) as daemon:
            wait_online(rq)
            rq.publish(TRIGGER, {"request_id": "live-1", "part_id": "p-1"})
            first = _verdict_of(rq, "live-1")
            # this requester saw every verdict of the first connection: none before live-1
            assert [m.json()["request_id"] for m in rq.messages(VERDICT)] == ["live-1"]
            b.restart()  # the daemon reconnects and subscribes again
            daemon.wait_event("mqtt.connected", n=2, timeout=60)
            with Requester(b.host, b.port, [f"{BASE}/#"]) as again:
                kept = again.wait(lambda m: m.topic in (TRIGGER, PRODUCT_SET) and m.retain, n=2)
                assert len(kept) == 2  # the broker still holds both: offered at the reconnect
                again.publish(TRIGGER, {"request_id": "live-2", "part_id": "p-2"})
                second = _verdict_of(again, "live-2")
                assert second["seq"] == first["seq"] + 1, "something was inspected in between"
                assert second["product"] == "button"
                assert daemon.terminate() == 0, daemon.tail()
                assert not again.messages(f"{BASE}/cmd/product/result")
    assert daemon.events("command.done") == [], daemon.events("command.done")
    refusals = _refused(daemon, "retained")
    if protocol == "5":
        assert refusals == []  # retain handling 2: the broker did not send them at all
    else:
        assert sorted(e["topic"] for e in refusals) == sorted([TRIGGER, PRODUCT_SET] * 2)


# -- item 6: response topics, large inputs, bounded echoes ---------------------------------------


@pytest.fixture
def station(mosquitto, tmp_path) -> Iterator[Station]:
    """Payloads up to 4 MiB accepted (the broker forwards them), so 1 MiB fields get parsed."""
    config = _config(tmp_path, mosquitto.port, trigger_max_bytes=4 * MIB)
    with (
        Daemon(config) as daemon,
        Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"]) as rq,
    ):
        wait_online(rq)
        yield Station(daemon, rq, tmp_path)


INSIDE_BASE = ["status", "verdict", "reject", "health", "trigger/response", "cmd/product/result"]


def test_a_response_topic_inside_the_station_base_is_refused_as_invalid_request(station):
    st = station
    sent: list[bytes] = []
    for name in INSIDE_BASE:
        response_topic = f"{BASE}/{name}"
        for kind, topic, payload in (
            ("trigger", TRIGGER, {"request_id": f"rt-{name}", "part_id": "p"}),
            ("command", RELOAD_SET, {}),
        ):
            corr = f"{kind}-{name}".encode()
            sent.append(corr)
            st.req.publish(topic, payload, response_topic=response_topic, correlation_data=corr)
            err = st.error_for(corr)
            assert err["error"] == "invalid_request", err
            assert "response topic" in err["detail"] and BASE in err["detail"], err
            assert err["topic"] == topic
            if kind == "trigger":
                assert err["request_id"] == f"rt-{name}", err
    # nothing answered inside the base, nothing inspected, no command run
    answered = [
        m.topic
        for m in st.req.messages()
        if m.topic not in (TRIGGER, RELOAD_SET, ERROR) and correlation(m) in sent
    ]
    assert answered == []
    assert st.trigger("after").json()["status"] == "done"
    assert [v["request_id"] for v in st.verdicts()] == ["after"]
    assert st.daemon.events("command.done") == []
    assert all(m.json()["state"] == "online" for m in st.req.messages(STATUS))
    stop_cleanly(st)


def test_a_1_mib_product_name_is_an_answered_validation_error_not_a_crash(station):
    st = station
    corr = st.command("product", {"product": "b" * MIB})
    msg = st.req.wait(lambda m: m.topic == ERROR and correlation(m) == corr)[0]
    err = msg.json()
    assert err["error"] == "command_failed" and err["command"] == "product", err["detail"][:300]
    assert err["detail"].startswith('expected {"product": "<bundle name>"}'), err["detail"][:300]
    assert len(msg.payload) < ECHO_BOUND, len(msg.payload)
    assert st.daemon.events("command.crashed") == []
    # the station is still on its product and answers
    assert st.trigger("after").json()["verdict"]["product"] == "button"
    stop_cleanly(st)


def test_what_an_answer_echoes_is_bounded(station):
    """Every place that echoes input back into …/error: a detail quoting a field name or
    value, the request's topic, a response topic. 1 MiB (64 KB for topics) of each comes back
    as a few hundred characters, marked truncated; so do the log lines."""
    st = station
    huge_key = "k" * MIB
    long_name = "n" * 60_000  # an MQTT topic is at most 65 535 bytes
    cases = [
        # (topic, payload, response topic, code, the truncated field)
        (
            TRIGGER,
            b'{"request_id":"e-1","part_id":"p","'
            + huge_key.encode()
            + b'":1,"'
            + huge_key.encode()
            + b'":2}',
            None,
            "invalid_request",
            "detail",
        ),
        (RELOAD_SET, json.dumps({huge_key: 1}).encode(), None, "command_failed", "detail"),
        (f"{BASE}/cmd/{long_name}/set", b"{}", None, "unknown_command", "topic"),
        (
            TRIGGER,
            json.dumps({"request_id": "e-4", "part_id": "p"}).encode(),
            f"{BASE}/{long_name}",
            "invalid_request",
            "detail",
        ),
    ]
    for i, (topic, payload, response_topic, code, field) in enumerate(cases):
        corr = f"echo-{i}".encode()
        st.req.publish(
            topic, payload, response_topic=response_topic or st.reply_topic, correlation_data=corr
        )
        msg = st.req.wait(lambda m, c=corr: m.topic == ERROR and correlation(m) == c)[0]
        assert len(msg.payload) < ECHO_BOUND, (i, len(msg.payload), msg.payload[:300])
        err = msg.json()
        assert err["error"] == code, (i, err)
        assert err["truncated"] == [field], (i, err)
        assert "characters, truncated" in err[field], (i, err[field][-80:])
        assert err["correlation_data"] == corr.hex()  # what a requester matches on: whole
    refusals = st.daemon.events("mqtt.request_refused")
    assert len(refusals) >= len(cases)
    assert max(len(json.dumps(e)) for e in refusals) < ECHO_BOUND
    stop_cleanly(st)


# -- item 7: a property value paho refuses ------------------------------------------------------


def _props(corr: bytes, response_topic: str, payload_format: int = 7) -> bytes:
    return (
        byte_property(PAYLOAD_FORMAT_INDICATOR, payload_format)
        + text_property(RESPONSE_TOPIC, response_topic)
        + binary_property(CORRELATION_DATA, corr)
    )


def test_an_invalid_payload_format_indicator_neither_drops_the_connection_nor_the_request(
    mosquitto, tmp_path
):
    """Before: paho took the PUBLISH for a malformed packet and closed the connection (Last Will
    ``offline``, the next request lost in the gap). MQTT 5 only: a 3.1.1 client gets no
    properties from the broker. The requester does not subscribe to the request topics: its
    own paho would drop its connection on these messages too."""
    config = _config(tmp_path, mosquitto.port)
    filters = ["requester/#", STATUS, VERDICT, ERROR]
    with Daemon(config) as daemon, Requester(mosquitto.host, mosquitto.port, filters) as rq:
        wait_online(rq)
        _send_and_check_pfi(Station(daemon, rq, tmp_path), mosquitto)


def _send_and_check_pfi(st: Station, mosquitto: LocalBroker) -> None:
    n = 20
    with RawPublisher(mosquitto.host, mosquitto.port, "test-raw-pfi") as raw:
        for i in range(n):
            body = {"request_id": f"pfi-{i}", "part_id": f"p-{i}"}
            raw.publish(
                TRIGGER, json.dumps(body).encode(), _props(f"pfi-{i}".encode(), st.reply_topic)
            )
        raw.publish(RELOAD_SET, b"{}", _props(b"pfi-cmd", st.reply_topic))
    try:
        for i in range(n):
            answer = st.answer(f"pfi-{i}".encode()).json()
            assert answer["status"] == "done" and answer["request_id"] == f"pfi-{i}", answer
        assert st.answer(b"pfi-cmd").json()["ok"] is True
    except AssertionError as exc:
        lost = st.daemon.events("mqtt.disconnected")
        raise AssertionError(
            f"{exc}\n(the daemon's connection dropped {len(lost)} times)"
        ) from None
    assert st.trigger("after").json()["status"] == "done"
    assert st.daemon.events("mqtt.disconnected") == []
    assert len(st.daemon.events("mqtt.connected")) == 1
    assert [m.json()["state"] for m in st.req.messages(STATUS)] == ["online"]
    ignored = st.daemon.events("mqtt.invalid_property_ignored")
    assert len(ignored) == n + 1 and ignored[0]["properties"] == ["PayloadFormatIndicator=7"]
    assert ignored[0]["topic"] == TRIGGER and ignored[-1]["topic"] == RELOAD_SET
    stop_cleanly(st)
