"""Part ids that are not valid UTF-8 (issue 15, bug 2): a folder file named with a non-UTF-8
byte, or a trigger's "\\udcff", made encode_json raise inside the outbox: the whole batch (up to
64 verdicts) was never published, and the next batch was handed the same seqs again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from inspectd.capture.folder import FolderSource
from inspectd.contract.topics import Topics
from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.delivery import Delivery
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.names import escape_name, unescape_name
from inspectd.outbox import Outbox

from support.daemon_process import Daemon
from support.mqtt_client import Subscriber
from support.paths import needs_bundle
from support.station import VERDICT, first_arrivals, jsonl, station_config


@pytest.mark.parametrize(
    "raw",
    [
        b"part\xff",
        b"\xc3\x28-bad-utf8",
        b"a\\xff-literal",
        b"tab\there",
        b"caf\xc3\xa9",
        b"\x80\x9f\\\\",
        b"plain-0001",
        # noncharacters: mosquitto drops a client with one in a property
        "n\uffff-\ufdd0-\U0001fffe".encode(),
    ],
)
def test_file_names_escape_to_valid_text_and_back(raw: bytes) -> None:
    name = os.fsdecode(raw)  # what os.listdir gives: surrogates for bytes that are not UTF-8
    escaped = escape_name(name)
    escaped.encode("utf-8")  # publishable
    assert escaped.isprintable()
    assert not any(0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE for c in escaped)
    assert os.fsencode(unescape_name(escaped)) == raw  # reversible, byte for byte
    if raw.isascii() and raw.decode().isprintable() and b"\\" not in raw:
        assert escaped == name  # ordinary names do not change


def test_folder_camera_escapes_a_file_name_that_is_not_utf8(tmp_path: Path, pngs) -> None:
    (tmp_path / os.fsdecode(b"p\xff1.png")).write_bytes(pngs["good"][0])
    with FolderSource(tmp_path) as source:
        frame = source.grab(1.0)
    assert frame.part_id == "p\\xff1" and frame.error is None


TOPICS = Topics("t/ids")


def record(i: int, part_id: str, request_id: str | None = None) -> VerdictRecord:
    now = time.time()
    return VerdictRecord(
        station="st1",
        product="button",
        part_id=part_id,
        verdict=Verdict.OK,
        score=0.1,
        threshold=0.5,
        model_name="m",
        model_sha256="ab" * 32,
        model_version=1,
        camera_serial="cam",
        frame_id=i,
        t_capture=now,
        t_verdict=now,
        latency_ms=1.0,
        request_id=request_id,
        t_mono=time.monotonic(),
    )


def test_one_unencodable_record_costs_nothing_else_and_no_seq_repeats(mosquitto, tmp_path) -> None:
    sub = Subscriber(mosquitto.host, mosquitto.port, f"{TOPICS.base}/#")
    pub = MqttPublisher(
        host=mosquitto.host,
        port=mosquitto.port,
        protocol="5",
        client_id=f"test-ids-{time.monotonic_ns()}",
        keepalive_s=10,
        topics=TOPICS,
        status_fields={},
    )
    pub.start()
    delivery = Delivery(Outbox(tmp_path / "o.db"), pub, TOPICS, travel_window_s=10)
    try:
        batch = [record(i, f"P{i:03d}") for i in range(1, 65)]
        batch[20] = record(21, "P\udcff", request_id="\ud800r")  # a trigger's lone surrogates
        delivery.record(batch)  # the pipeline's biggest batch
        delivery.record([record(65, "P065")])
        verdicts = [m.json() for m in sub.wait_for(65, timeout=10, topic=TOPICS.verdict)]
        rejects = [m.json() for m in sub.wait_for(1, timeout=5, topic=TOPICS.reject)]
    finally:
        pub.stop(timeout=0.5)
        delivery.outbox.close()
        sub.close()
    assert [v["seq"] for v in verdicts] == list(range(1, 66))  # all of them, no seq twice
    bad = verdicts[20]
    # ERROR, so that a PLC rejects a part whose id it may not match; the text says why
    assert (bad["part_id"], bad["request_id"], bad["verdict"]) == ("P\\xff", "\\ud800r", "ERROR")
    assert "not valid UTF-8" in bad["error"] and "verdict OK" in bad["error"]
    assert [r["seq"] for r in rejects] == [21]
    assert {v["verdict"] for i, v in enumerate(verdicts) if i != 20} == {"OK"}
    assert batch[20].verdict is Verdict.ERROR  # what files and trigger answers say matches


@needs_bundle
def test_daemon_publishes_a_part_whose_file_name_is_not_utf8(mosquitto, pngs, tmp_path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    names = [b"p0001_good", b"p0002\xff_good", b"p0003_good", b"p0004\xfe\xfd_crack", b"p0005"]
    for i, raw in enumerate(names):
        kind = "crack" if b"crack" in raw else "good"
        (frames / os.fsdecode(raw + b".png")).write_bytes(pngs[kind][i % len(pngs[kind])])
    config = station_config(
        tmp_path, port=mosquitto.port, camera={"path": frames}, mqtt={"overlays": "none"}
    )
    with Subscriber(mosquitto.host, mosquitto.port, VERDICT) as sub, Daemon(config) as daemon:
        assert daemon.wait(60) == 0, daemon.tail()
        verdicts = first_arrivals(sub.wait_for(5, timeout=10))
    assert [v["seq"] for v in verdicts] == [1, 2, 3, 4, 5]
    assert [os.fsencode(unescape_name(v["part_id"])) for v in verdicts] == names
    assert verdicts[1]["part_id"] == "p0002\\xff_good" and verdicts[1]["verdict"] == "OK"
    assert verdicts[3]["verdict"] == "NG"
    assert [v["seq"] for v in jsonl(tmp_path)] == [1, 2, 3, 4, 5]
    assert daemon.events("verdicts.not_recorded") == []
