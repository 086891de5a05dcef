"""A broker that takes the connection but refuses the verdicts (issue 31, item 1): `inspectd
run` as a process against a private mosquitto whose ACL denies the verdict and reject topics,
so it answers each of them with PUBACK 0x87 (Not authorized). Before the fix the outbox deleted
them on that PUBACK: 40 of 40 verdicts gone, health ok, /metrics healthy."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inspectd.mqtt.broker import find_mosquitto

from support.daemon_process import Daemon
from support.mqtt_client import Subscriber
from support.paths import needs_bundle
from support.secure_broker import set_acl, start_acl_mosquitto
from support.station import BASE, REJECT, VERDICT, first_arrivals, station_config, write_parts
from support.waiting import wait_until

pytestmark = [
    needs_bundle,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]

DENY_VERDICTS = f"topic readwrite #\ntopic deny {VERDICT}\ntopic deny {REJECT}\n"
ALLOW_ALL = "topic readwrite #\n"


def health(tmp: Path) -> dict[str, Any]:
    try:
        return json.loads((tmp / "state" / "health.json").read_text())
    except (OSError, ValueError):  # not written yet
        return {}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def gauge(base: str, name: str) -> float:
    status, body = get(base + "/metrics")
    assert status == 200
    samples = [
        s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name == name
    ]
    assert len(samples) == 1, (name, samples)
    return samples[0]


def refused_problems(tmp: Path) -> list[str]:
    return [p for p in health(tmp).get("problems", []) if p.startswith("mqtt_refused")]


def test_refused_verdicts_degrade_health_and_healthz_and_arrive_once_the_acl_allows_them(
    pngs, tmp_path
):
    write_parts(tmp_path / "frames", ["good", "good", "crack", "good", "empty"], pngs)
    acl = tmp_path / "acl"
    with start_acl_mosquitto(acl, DENY_VERDICTS) as broker:
        config = station_config(
            tmp_path,
            port=broker.port,
            camera={"loop": True, "rate_hz": 10},
            mqtt={"overlays": "none", "drain_timeout_s": 10},
            metrics={"enabled": True, "port": 0},
        )
        with (
            Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
            Daemon(config) as daemon,
        ):
            base = f"http://127.0.0.1:{daemon.wait_event('metrics.listening')[0]['port']}"
            wait_until(lambda: refused_problems(tmp_path), 20, "mqtt_refused in health.json")
            state = health(tmp_path)
            assert state["state"] == "degraded"
            (problem,) = refused_problems(tmp_path)
            assert VERDICT in problem and "Not authorized (0x87)" in problem, problem
            assert state["outbox"]["depth"] >= 1

            status, body = get(base + "/healthz")
            answer = json.loads(body)
            # alive (a restart would not fix an ACL), but it says why verdicts do not go out
            assert status == 200 and answer["status"] == "degraded", answer
            assert any(p.startswith("mqtt_refused") for p in answer["problems"]), answer
            assert gauge(base, "inspectd_health_ok") == 0
            assert gauge(base, "inspectd_mqtt_connected") == 1
            assert gauge(base, "inspectd_mqtt_refused_waiting") >= 1
            wait_until(
                lambda: health(tmp_path).get("outbox", {}).get("depth", 0) >= 20,
                30,
                "20 verdicts held",
            )
            assert sub.messages(VERDICT) == []

            set_acl(broker, acl, ALLOW_ALL)
            sub.wait_for(20, timeout=90, topic=VERDICT)
            wait_until(lambda: not refused_problems(tmp_path), 20, "mqtt_refused to clear")
            status, body = get(base + "/healthz")
            assert status == 200 and json.loads(body)["status"] == "live", body
            assert daemon.terminate() == 0, daemon.tail()
        verdicts = first_arrivals(sub.messages(VERDICT))
    seqs = [v["seq"] for v in verdicts]
    assert seqs == list(range(1, len(seqs) + 1))  # none lost, in order
    assert len(seqs) >= 20
