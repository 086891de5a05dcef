"""The message builders (inspectd.contract.messages) against the contract table of docs/mqtt.md.

The table is parsed from the document itself, so the documentation and the code cannot drift:
a key added to a payload without the table (or the other way round), another QoS, retain flag
or expiry fails here. Pure: no broker, no paho.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import pytest

from inspectd.contract.messages import (
    ECHO_MAX_CHARS,
    OutgoingMessage,
    command_answer,
    encode_json,
    error_message,
    health_message,
    overlay_message,
    reply_message,
    stats_message,
    status_message,
    teach_message,
    trigger_answer,
    verdict_messages,
)
from inspectd.contract.topics import Topics, command_topic
from inspectd.contract.verdict import Verdict
from inspectd.contract.vocabulary import StationState

from support.contract import TABLE, check_keys, verdict_record

TOPICS = Topics("inspectd/v1/site/line1/st1")
STATUS_FIELDS = {
    "boot_id": "b" * 32,
    "version": "0.1.0",
    "product": "button",
    "model_sha256": "ab" * 32,
}


def test_the_table_parses_as_documented() -> None:
    """The parser itself, on rows whose shape is known: enumerations, optionals, nesting."""
    assert {
        "status",
        "verdict",
        "reject",
        "overlay",
        "health",
        "stats",
        "trigger",
        "trigger/response",
        "cmd/<name>/set",
        "cmd/<name>/result",
        "error",
    } <= set(TABLE)
    status = TABLE["status"].keys
    assert status is not None and status["state"].values == {"online", "stopped", "offline"}
    verdict = TABLE["verdict"].keys
    assert verdict is not None
    assert set(verdict["regions"].children or {}) == {"x", "y", "w", "h", "area", "peak"}
    # the bundle version that judged the part (issue 34): added deliberately
    assert set(verdict["model"].children or {}) == {"name", "sha256", "version"}
    error = TABLE["error"].keys
    assert error is not None and error["request_id"].optional and not error["ts"].optional
    assert TABLE["health"].open and not TABLE["verdict"].open
    assert TABLE["trigger"].subscribed


# -- the builders -----------------------------------------------------------------------------


def payload_of(message: OutgoingMessage) -> dict[str, Any]:
    return json.loads(message.payload.decode("utf-8"))


def iso(value: Any) -> bool:
    return (
        isinstance(value, str) and datetime.fromisoformat(value.replace("Z", "+00:00")) is not None
    )


# Types the table does not spell out; every documented key must have one (a new key needs a
# line here), and every one here must be documented.
NUMBER = (int, float)
TYPES: dict[str, dict[str, Any]] = {
    "status": {
        "state": str,
        "ts": iso,
        "boot_id": str,
        "version": str,
        "product": str,
        "model_sha256": str,
    },
    "verdict": {
        "schema": str,
        "seq": int,
        "station": str,
        "product": str,
        "part_id": str,
        "request_id": (str, type(None)),
        "verdict": str,
        "score": (*NUMBER, type(None)),
        "threshold": (*NUMBER, type(None)),
        "regions": list,
        "model": dict,
        "camera": dict,
        "t_capture": iso,
        "t_verdict": iso,
        "latency_ms": NUMBER,
        "replayed": bool,
        "durable": bool,
        "late": bool,
        "error": (str, type(None)),
    },
    "reject": {"station": str, "part_id": str, "seq": int, "verdict": str, "deadline_ts": iso},
    "error": {
        "error": str,
        "detail": str,
        "topic": str,
        "request_id": (str, type(None)),
        "command": str,
        "truncated": list,
        "correlation_data": str,
        "ts": iso,
    },
}


def check_row(topic: str, message: OutgoingMessage, *, keys: bool = True) -> dict[str, Any]:
    """``message`` is what ``topic``'s row of the table says: topic, QoS, retain, expiry and,
    for a JSON object payload, exactly the documented keys (optional ones may be missing),
    their documented values and types; nested objects too. Returns the payload."""
    row = TABLE[topic]
    assert message.topic == f"{TOPICS.base}/{topic}"
    assert (message.qos, message.retain) == (row.qos, row.retained), row
    assert (message.expires is not None) == row.expiry, row
    if row.keys is None or not keys:
        return {}
    payload = payload_of(message)
    check_keys(payload, row.keys, row.open, topic)
    types = TYPES.get(topic)
    if types is not None:
        assert set(types) == set(row.keys), f"TYPES[{topic!r}] and the table differ"
        for key, value in payload.items():
            want = types[key]
            assert (
                want(value)
                if callable(want) and not isinstance(want, type)
                else isinstance(value, want)
            ), (topic, key, value)
    return payload


@pytest.mark.parametrize("state", sorted(TABLE["status"].keys["state"].values))  # type: ignore[index]
def test_status_is_as_documented(state: str) -> None:
    payload = check_row("status", status_message(TOPICS, StationState(state), STATUS_FIELDS))
    assert payload["state"] == state


@pytest.mark.parametrize("verdict", list(Verdict))
def test_verdict_and_reject_are_as_documented(verdict: Verdict) -> None:
    rec = verdict_record(verdict, request_id="r-1" if verdict is Verdict.NG else None)
    messages = verdict_messages(TOPICS, rec, travel_window_s=10.0)
    payload = check_row("verdict", messages[0])
    assert payload["seq"] == 42 and payload["verdict"] == verdict.value
    if verdict is Verdict.OK:
        assert len(messages) == 1  # rejects only for what a PLC diverts
        return
    assert len(messages) == 2
    reject = check_row("reject", messages[1])
    assert (reject["seq"], reject["verdict"]) == (42, verdict.value)
    assert messages[1].expires == pytest.approx(rec.t_verdict + 10.0)
    assert messages[1].expires_mono == pytest.approx(rec.t_mono + 10.0)  # type: ignore[operator]


def test_schema_is_the_documented_one() -> None:
    (schema,) = TABLE["verdict"].keys["schema"].values  # type: ignore[index]
    assert (
        payload_of(verdict_messages(TOPICS, verdict_record(Verdict.OK), 10.0)[0])["schema"]
        == schema
    )


def test_a_trigger_deadline_is_the_reject_deadline() -> None:
    rec = verdict_record(
        Verdict.NG, deadline_ts=time.time() + 3.0, deadline_mono=time.monotonic() + 3.0
    )
    reject = verdict_messages(TOPICS, rec, travel_window_s=60.0)[1]
    assert reject.expires == rec.deadline_ts and reject.expires_mono == rec.deadline_mono


def test_error_is_as_documented() -> None:
    message = error_message(
        TOPICS,
        "invalid_request",
        "no part_id",
        source_topic=TOPICS.trigger,
        correlation_data=b"\x01\x02",
        request_id="r-1",
    )
    payload = check_row("error", message)
    assert payload["correlation_data"] == "0102" and message.correlation_data == b"\x01\x02"
    bare = check_row(
        "error",
        error_message(
            TOPICS, "malformed_json", "not JSON", source_topic=TOPICS.trigger, correlation_data=None
        ),
    )
    assert "correlation_data" not in bare and bare["error"] == "malformed_json"


def test_an_error_echoes_a_bounded_part_of_the_request_and_says_so() -> None:
    """Issue 31: a 1 MiB field name came back whole in the detail; a 60 KB command topic in
    ``topic``. The correlation data is what a requester matches on: echoed whole."""
    corr = bytes(range(256)) * 4
    detail = "duplicate key " + repr("k" * (1 << 20))
    message = error_message(
        TOPICS,
        "invalid_request",
        detail,
        source_topic=f"{TOPICS.base}/cmd/{'n' * 60_000}/set",
        correlation_data=corr,
        request_id="r-1",
        command="c" * ECHO_MAX_CHARS,  # at the bound: not cut
    )
    payload = check_row("error", message)
    assert payload["truncated"] == ["detail", "topic"]
    for field in payload["truncated"]:
        assert len(payload[field]) < ECHO_MAX_CHARS + 40
        assert payload[field].endswith(" characters, truncated)")
    assert payload["detail"].startswith("duplicate key 'kkk")
    assert f"… ({len(detail)} characters, truncated)" in payload["detail"]
    assert payload["command"] == "c" * ECHO_MAX_CHARS and payload["request_id"] == "r-1"
    assert payload["correlation_data"] == corr.hex() and message.correlation_data == corr
    assert len(message.payload) < 3 * (ECHO_MAX_CHARS + 40) + len(corr.hex()) + 200
    short = check_row(
        "error",
        error_message(TOPICS, "x", "short", source_topic=TOPICS.trigger, correlation_data=None),
    )
    assert "truncated" not in short


def test_an_answer_with_a_lone_surrogate_is_still_sent() -> None:
    message = reply_message(
        f"{TOPICS.base}/trigger/response",
        {"part_id": "p\udcff"},
        source_topic=TOPICS.trigger,
        correlation_data=None,
    )
    assert json.loads(message.payload) == {"part_id": "p\udcff"}


@pytest.mark.parametrize(
    "topic, payload",
    [
        ("cmd/<name>/result", command_answer("product", {"product": "button"})),
        (
            "trigger/response",
            trigger_answer(
                "r-1", "p-1", "done", Verdict.NG, verdict_record(Verdict.NG, part_id="p-1")
            ),
        ),
        (
            "trigger/response",
            trigger_answer("r-2", "p-2", "late", Verdict.NG, None, "late: past 200 ms"),
        ),
    ],
)
def test_replies_are_as_documented(topic: str, payload: dict[str, Any]) -> None:
    """The answers the command and trigger desks send (the builders they call), as the table
    says: a key renamed or added in the code and not in the document fails here."""
    message = reply_message(
        f"{TOPICS.base}/{topic}", payload, source_topic=TOPICS.trigger, correlation_data=b"c"
    )
    sent = check_row(topic, message)
    assert message.correlation_data == b"c"
    if sent.get("status") == "done":  # the recorded verdict, whole
        verdict = TABLE["verdict"]
        assert verdict.keys is not None
        check_keys(sent["verdict"], verdict.keys, verdict.open, "trigger/response verdict")
    elif topic == "trigger/response":  # late: NG, no seq yet
        assert sent["verdict"]["verdict"] == "NG" and sent["verdict"]["seq"] is None


def test_overlay_is_as_documented() -> None:
    row = TABLE["overlay"]
    message = overlay_message(TOPICS.overlay, b"\xff\xd8jpeg", verdict_record(Verdict.NG))
    check_row("overlay", message)
    listed = re.search(r"user properties ((?:`\w+`,? ?)+)", row.payload)
    assert listed is not None
    assert [k for k, _ in message.user_properties] == re.findall(r"`(\w+)`", listed.group(1))
    assert message.content_type == "image/jpeg"


def test_health_and_stats_are_as_documented() -> None:
    # the health payload is the station's (its keys: tests/component/test_health.py); the
    # message here
    check_row("health", health_message(TOPICS, encode_json({"state": "ok"})), keys=False)
    check_row("stats", stats_message(TOPICS, {"verdicts": {"OK": 1}}))


def test_command_topics_are_written_and_read_in_one_place() -> None:
    """The station answers on, and the page sends to and reads answers from, the topics that
    contract.topics writes and parses (both wrote their own f-strings and partitions)."""
    assert TOPICS.cmd("product") == f"{TOPICS.base}/cmd/product/set"
    assert TOPICS.cmd("product", "result") == f"{TOPICS.base}/cmd/product/result"
    assert command_topic(TOPICS.cmd("reviews", "result")) == (TOPICS.base, "reviews", "result")
    for other in (TOPICS.status, f"{TOPICS.base}/cmd/product", "cmd/product/set"):
        assert command_topic(other) is None
    with pytest.raises(ValueError, match="set or result"):
        TOPICS.cmd("product", "get")


@pytest.mark.parametrize("state", sorted(TABLE["teach"].keys["state"].values))  # type: ignore[index]
def test_teach_events_are_as_documented(state: str) -> None:
    message = teach_message(TOPICS, state, "button", "teach", version=2)
    payload = check_row("teach", message)
    assert payload["state"] == state and payload["version"] == 2
