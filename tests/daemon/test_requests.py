"""Requests to a running `inspectd run`: triggers on …/trigger and commands on …/cmd/<name>/set.

The daemon is the real child process with a folder camera; the broker is a private mosquitto;
the requester is a plain paho 2.x client that publishes with MQTT 5 ResponseTopic and
CorrelationData, as a PLC gateway or MES would.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from inspectd.bundle import THRESHOLDS, Thresholds, load_bundle
from inspectd.bundle_seal import replace_thresholds

from support.daemon_process import Daemon
from support.paths import BUNDLE, PRODUCTS, needs_bundle
from support.products import copy_bundle
from support.requester import (
    Requester,
    Station,
    correlation,
    request_station_config,
    stop_cleanly,
    wait_online,
)
from support.station import BASE, ERROR, TRIGGER, VERDICT, write_good_frames

pytestmark = needs_bundle

_SHIPPED = BUNDLE / THRESHOLDS
SHIPPED_THRESHOLD = yaml.safe_load(_SHIPPED.read_text())["image"] if _SHIPPED.is_file() else None


# -- helpers ----------------------------------------------------------------------------------


def set_image_threshold(bundle_dir: Path, image: float) -> None:
    """Change thresholds.yaml's ``image`` and re-seal the manifest's sha256 of it (what
    `inspectd calibrate` does on the box)."""
    data = yaml.safe_load((bundle_dir / THRESHOLDS).read_text())
    data["image"] = image
    replace_thresholds(bundle_dir, Thresholds.model_validate(data))


# -- fixtures -----------------------------------------------------------------------------------


def start_station(
    mosquitto: Any, tmp: Path, *, products_dir: Path = PRODUCTS, **camera: Any
) -> tuple[Daemon, Requester]:
    frames = write_good_frames(tmp / "frames")
    config = request_station_config(
        tmp,
        mosquitto.port,
        frames,
        products_dir=products_dir,
        camera={"trigger": "mqtt", **camera},
    )
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"])
    daemon = Daemon(config)
    return daemon, req


@pytest.fixture
def station(mosquitto, tmp_path):
    daemon, req = start_station(mosquitto, tmp_path)
    with daemon, req:
        wait_online(req)
        yield Station(daemon, req, tmp_path)


# -- A. triggers --------------------------------------------------------------------------------


def test_a_trigger_is_answered_once_on_its_response_topic_and_on_verdict(station):
    st = station
    corr = b"\x00\x01binary-corr\xff"
    answer = st.trigger("req-1", "part-A", corr=corr)
    assert answer is not None
    body = answer.json()
    assert body["request_id"] == "req-1" and body["part_id"] == "part-A"
    assert body["status"] == "done" and not body.get("duplicate")
    v = body["verdict"]
    assert v["schema"] == "inspectd.verdict/1"
    assert v["part_id"] == "part-A" and v["request_id"] == "req-1"
    assert v["verdict"] in ("OK", "NG") and v["error"] is None
    assert v["product"] == "button" and v["threshold"] == SHIPPED_THRESHOLD
    assert isinstance(v["seq"], int) and v["seq"] >= 1

    # the same verdict (same seq) on …/verdict, with the request's id
    on_verdict = st.wait_verdict("req-1")
    assert on_verdict == v

    # a second, different request: answered too; the first still has exactly one answer
    second = st.trigger("req-2", "part-B").json()
    assert second["verdict"]["seq"] > v["seq"] and second["verdict"]["part_id"] == "part-B"
    st.wait_verdict("req-2")
    answers = [m for m in st.req.messages(st.reply_topic) if correlation(m) == corr]
    assert len(answers) == 1
    assert len(st.verdicts("req-1")) == 1
    assert not st.req.messages(ERROR), [m.json() for m in st.req.messages(ERROR)]
    stop_cleanly(st)


def test_a_repeated_request_id_is_answered_from_the_cache_without_a_second_verdict(station):
    st = station
    first = st.trigger("dup-1", "part-D", corr=b"first").json()
    assert first["status"] == "done" and not first.get("duplicate")
    st.wait_verdict("dup-1")

    # sent again after the answer: the cached answer, marked duplicate
    again = st.trigger("dup-1", "part-D", corr=b"again").json()
    assert again["duplicate"] is True
    assert again["status"] == "done" and again["verdict"] == first["verdict"]

    # sent twice back-to-back: one inspection; both answered, the second marked duplicate
    st.trigger("dup-2", "part-E", corr=b"quick-1", wait=False)
    st.trigger("dup-2", "part-E", corr=b"quick-2", wait=False)
    a = st.answer(b"quick-1").json()
    b = st.answer(b"quick-2").json()
    assert a["request_id"] == b["request_id"] == "dup-2"
    assert not a.get("duplicate"), a
    assert b.get("duplicate") is True, b
    assert a["verdict"] == b["verdict"]

    # a later request's verdict has a higher seq: any second inspection of dup-1/dup-2 would
    # have been published on …/verdict before it
    barrier = st.trigger("barrier", "part-F").json()
    st.wait_verdict("barrier")
    assert len(st.verdicts("dup-1")) == 1, st.verdicts("dup-1")
    assert len(st.verdicts("dup-2")) == 1, st.verdicts("dup-2")
    seqs = [v["seq"] for v in st.verdicts()]
    assert seqs == sorted(set(seqs))
    assert barrier["verdict"]["seq"] == first["verdict"]["seq"] + 2
    for corr in (b"first", b"again", b"quick-1", b"quick-2"):
        assert len([m for m in st.req.messages(st.reply_topic) if correlation(m) == corr]) == 1
    stop_cleanly(st)


def test_a_request_past_its_deadline_is_answered_late_ng_and_its_verdict_still_published(station):
    # issue 32: the answer never waits for the verdict; what comes after is recorded, late
    st = station
    body = st.trigger("late-1", "part-L", deadline_ms=0.001).json()
    assert body["status"] == "late" and body["request_id"] == "late-1"
    v = body["verdict"]
    assert v["verdict"] == "NG" and v["seq"] is None and v["late"] is True
    assert v["error"].startswith("late: "), v["error"]
    assert v["part_id"] == "part-L" and v["request_id"] == "late-1"
    published = st.wait_verdict("late-1")
    assert published["late"] is True and published["verdict"] == "ERROR"
    assert published["error"].startswith("trigger expired"), published["error"]
    # a generous deadline is met
    ok = st.trigger("in-time", "part-M", deadline_ms=20000).json()
    assert ok["status"] == "done" and ok["verdict"]["verdict"] in ("OK", "NG")
    assert ok["verdict"]["late"] is False
    stop_cleanly(st)


BAD_REQUESTS = [
    (b"{not json", "malformed_json", None, "not JSON"),
    (json.dumps({"request_id": "m-1"}).encode(), "invalid_request", "m-1", "part_id"),
    (
        json.dumps({"request_id": "u-1", "part_id": "p", "colour": "red"}).encode(),
        "invalid_request",
        "u-1",
        "colour",
    ),
    (
        json.dumps({"request_id": "big", "part_id": "x" * 5000}).encode(),
        "payload_too_large",
        None,
        "at most 4096",
    ),
]


def test_bad_requests_are_refused_on_error_with_correlation_and_the_daemon_goes_on(station):
    st = station
    for i, (payload, code, request_id, detail) in enumerate(BAD_REQUESTS):
        corr = f"bad-{i}".encode()
        st.req.publish(TRIGGER, payload, response_topic=st.reply_topic, correlation_data=corr)
        err = st.error_for(corr)
        assert err["error"] == code, err
        assert detail in err["detail"], err
        assert err["topic"] == TRIGGER and err["ts"]
        assert err.get("request_id") == request_id, err
        # the next good request is still answered
        good = st.trigger(f"good-{i}").json()
        assert good["status"] == "done" and good["verdict"]["verdict"] in ("OK", "NG")
        # the refused request got no answer on the response topic
        assert not [m for m in st.req.messages(st.reply_topic) if correlation(m) == corr]
    assert st.daemon.running
    # refused requests were not inspected: one verdict per good request, nothing else
    st.wait_verdict(f"good-{len(BAD_REQUESTS) - 1}")  # verdicts come from the outbox, after
    assert sorted(v["request_id"] for v in st.verdicts()) == [
        f"good-{i}" for i in range(len(BAD_REQUESTS))
    ]
    stop_cleanly(st)


def test_a_mqtt311_requester_gets_its_answer_on_trigger_response(mosquitto, tmp_path):
    daemon, req = start_station(mosquitto, tmp_path)
    with daemon, req:
        wait_online(req)
        with Requester(
            mosquitto.host, mosquitto.port, [f"{TRIGGER}/response", ERROR], protocol="3.1.1"
        ) as old:
            old.publish(TRIGGER, {"request_id": "v3-1", "part_id": "part-3"})
            answer = old.wait(f"{TRIGGER}/response")[0]
            body = answer.json()
            assert body["request_id"] == "v3-1" and body["status"] == "done"
            assert body["verdict"]["part_id"] == "part-3"
            assert body["verdict"]["request_id"] == "v3-1"
            # a refusal reaches a 3.1.1 client on …/error too
            old.publish(TRIGGER, b"[1, 2]")
            err = old.wait(ERROR)[0].json()
            assert err["error"] == "invalid_request" and "correlation_data" not in err
        assert daemon.terminate() == 0, daemon.tail()


def test_a_free_running_station_refuses_triggers_with_not_triggered(mosquitto, tmp_path):
    frames = write_good_frames(tmp_path / "frames")
    config = request_station_config(
        tmp_path, mosquitto.port, frames, camera={"trigger": "free_run", "rate_hz": 5}
    )
    with Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"]) as req:
        with Daemon(config) as daemon:
            wait_online(req)
            req.wait(VERDICT)  # it runs free
            corr = b"free-run?"
            req.publish(
                TRIGGER,
                {"request_id": "fr-1", "part_id": "p"},
                response_topic="requester/x/answers",
                correlation_data=corr,
            )
            err = req.wait(lambda m: m.topic == ERROR and correlation(m) == corr)[0].json()
            assert err["error"] == "not_triggered" and err["request_id"] == "fr-1"
            assert err["correlation_data"] == corr.hex()
            assert "free_run" in err["detail"]
            assert not req.messages("requester/x/answers")
            assert not [v for v in req.messages(VERDICT) if v.json()["request_id"] is not None]
            assert daemon.terminate() == 0, daemon.tail()


# -- B. commands --------------------------------------------------------------------------------


def test_reload_thresholds_by_command_and_by_sighup(mosquitto, tmp_path):
    products = tmp_path / "products"
    bundle = copy_bundle(products, "button")
    daemon, req = start_station(mosquitto, tmp_path, products_dir=products)
    with daemon, req:
        wait_online(req)
        st = Station(daemon, req, tmp_path)
        before = st.trigger("t-0").json()["verdict"]
        assert before["threshold"] == SHIPPED_THRESHOLD

        set_image_threshold(bundle, 0.001)  # every part scores above it: NG
        corr = st.command("reload_thresholds", {})
        result = st.answer(corr).json()
        assert result["command"] == "reload_thresholds" and result["ok"] is True
        assert result["image"] == 0.001 and result["previous_image"] == SHIPPED_THRESHOLD
        for i in range(2):
            v = st.trigger(f"t-low-{i}").json()["verdict"]
            assert v["threshold"] == 0.001 and v["verdict"] == "NG", v
            assert v["score"] >= v["threshold"]

        # SIGHUP does the same (no reply: the log says so)
        set_image_threshold(bundle, 5.0)  # above any score: OK
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = daemon.wait_event("thresholds.reloaded", n=2)[-1]
        assert reloaded["image"] == 5.0 and reloaded["previous_image"] == 0.001
        for i in range(2):
            v = st.trigger(f"t-high-{i}").json()["verdict"]
            assert v["threshold"] == 5.0 and v["verdict"] == "OK", v
            assert v["score"] < v["threshold"]
        assert daemon.running
        stop_cleanly(st)


def test_product_command_switches_to_another_bundle(mosquitto, tmp_path):
    products = tmp_path / "products"
    copy_bundle(products, "button")
    second = copy_bundle(products, "button2")
    set_image_threshold(second, 0.25)
    daemon, req = start_station(mosquitto, tmp_path, products_dir=products)
    with daemon, req:
        wait_online(req)
        st = Station(daemon, req, tmp_path)
        v = st.trigger("p-0").json()["verdict"]
        assert v["product"] == "button" and v["threshold"] == SHIPPED_THRESHOLD

        # no response topic: the result comes on …/cmd/product/result
        st.command("product", {"product": "button2"}, reply=False)
        result = req.wait(f"{BASE}/cmd/product/result", timeout=30)[0].json()
        assert result["command"] == "product" and result["ok"] is True
        assert result["product"] == "button2" and result["previous"] == "button"
        status = wait_online(req, product="button2")  # re-published with the new product
        assert status["model_sha256"] == load_bundle(second).model_sha256
        for i in range(2):
            v = st.trigger(f"p-2-{i}").json()["verdict"]
            assert v["product"] == "button2" and v["threshold"] == 0.25, v
        assert st.wait_verdict("p-2-1")["product"] == "button2"

        # reload now reads button2's thresholds
        set_image_threshold(second, 0.3)
        result = st.answer(st.command("reload_thresholds")).json()
        assert result["ok"] is True and result["product"] == "button2" and result["image"] == 0.3
        assert st.trigger("p-3").json()["verdict"]["threshold"] == 0.3
        stop_cleanly(st)
    health = json.loads((tmp_path / "state" / "health.json").read_text())
    assert health["product"] == "button2"


def test_unknown_commands_and_bad_arguments_are_refused_and_the_daemon_goes_on(mosquitto, tmp_path):
    products = tmp_path / "products"
    bundle = copy_bundle(products, "button")
    daemon, req = start_station(mosquitto, tmp_path, products_dir=products)
    with daemon, req:
        wait_online(req)
        st = Station(daemon, req, tmp_path)

        err = st.error_for(st.command("format_disk", {"device": "/dev/sda"}))
        assert err["error"] == "unknown_command", err
        assert "format_disk" in err["detail"] and err["topic"] == f"{BASE}/cmd/format_disk/set"

        refusals = [
            ("reload_thresholds", {"force": True}, "takes no arguments"),
            ("product", {"product": "nosuch"}, "nosuch"),
            ("product", {"product": "../button"}, "expected"),
            ("product", {"name": "button"}, "expected"),
        ]
        for name, args, detail in refusals:
            err = st.error_for(st.command(name, args))
            assert err["error"] == "command_failed", (name, args, err)
            assert err["command"] == name and detail in err["detail"], err

        # thresholds.yaml edited without re-sealing the manifest: refused, old threshold kept
        text = (bundle / THRESHOLDS).read_text()
        edited = text.replace(f"image: {SHIPPED_THRESHOLD}", "image: 0.5")
        assert edited != text
        (bundle / THRESHOLDS).write_text(edited)
        err = st.error_for(st.command("reload_thresholds"))
        assert err["error"] == "command_failed" and "does not match the manifest" in err["detail"]

        assert daemon.running
        v = st.trigger("after").json()["verdict"]
        assert v["threshold"] == SHIPPED_THRESHOLD and v["product"] == "button"
        # no command succeeded
        assert not [m for m in req.messages() if m.topic.endswith("/result")]
        assert not [m for m in req.messages(st.reply_topic) if m.json().get("ok")]
        stop_cleanly(st)


def test_the_answer_does_not_wait_for_files_and_overlays(mosquitto, tmp_path, monkeypatch):
    """In-process station with an overlay writer made slow (1.5 s a picture, as a stalled disk
    would be): the trigger's answer still comes at once, since answers are the first sink."""
    from inspectd.config import load_station_config
    from inspectd.outputs.sinks import OverlaySink
    from inspectd.service.station import Station as LiveStation

    slow = OverlaySink.handle

    def handle(self, inspection):  # noqa: ANN001
        time.sleep(1.5)
        slow(self, inspection)

    monkeypatch.setattr(OverlaySink, "handle", handle)
    path = request_station_config(
        tmp_path, mosquitto.port, write_good_frames(tmp_path / "frames"), camera={"trigger": "mqtt"}
    )
    config = yaml.safe_load(path.read_text())
    config["output"] = {"dir": str(tmp_path / "out"), "overlays": "all"}
    path.write_text(json.dumps(config))
    live = LiveStation(load_station_config(path))
    live.start()
    runner = threading.Thread(target=live.run, kwargs={"limit": 1}, daemon=True)
    runner.start()
    try:
        with Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"]) as req:
            st = Station(None, req, tmp_path)  # type: ignore[arg-type]
            t0 = time.monotonic()
            answer = st.trigger("fast-1").json()
            waited = time.monotonic() - t0
        assert answer["status"] == "done" and answer["verdict"]["request_id"] == "fast-1"
        assert waited < 1.0, f"the answer took {waited:.2f} s: it waited for the overlay"
        runner.join(timeout=10)
    finally:
        live.stop()
    assert len(list((tmp_path / "out" / "overlays").glob("*.jpg"))) == 1  # written, later
