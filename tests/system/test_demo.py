"""`inspectd demo`, the README's first command, run as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from inspectd.mqtt.broker import free_port

from support.mqtt_client import Subscriber
from support.paths import LEAN_RUN

TOPIC = "inspectd/v1/demo/line1/demo1"
LIMIT = 40  # the end-to-end check: 40 parts, both verdict kinds


def run_demo(out: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [
        "demo",
        *extra,
        "--out",
        str(out),
        "--limit",
        str(LIMIT),
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        str(port),
    ]
    # stdin not a terminal, as in a script: the demo ends with its parts (no --hold)
    return subprocess.run(
        [sys.executable, "-c", LEAN_RUN, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )


def check_output(proc: subprocess.CompletedProcess[str], out: Path) -> list[dict]:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, LIMIT + 1))
    by_part = {r["part_id"]: r for r in records}
    # the truncated file is an ERROR with its reason, never OK and never skipped
    assert by_part["0025_corrupt"]["verdict"] == "ERROR"
    assert "cannot decode" in by_part["0025_corrupt"]["error"]
    verdicts = {r["verdict"] for r in records}
    assert {"OK", "NG", "ERROR"} <= verdicts
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("OK", "NG", "ERROR")}
    summary = (
        f"Summary: {LIMIT} parts  OK {counts['OK']}  NG {counts['NG']}  ERROR {counts['ERROR']}"
    )
    assert summary in proc.stdout
    auroc = float(re.search(r"image AUROC on this run: ([0-9.]+)", proc.stdout).group(1))
    assert auroc > 0.7  # the bundled model tells defects from good parts
    received = re.search(r"MQTT: (\d+) verdicts and (\d+) rejects", proc.stdout)
    assert received and int(received.group(1)) == LIMIT
    assert int(received.group(2)) == counts["NG"] + counts["ERROR"]
    assert len(list((out / "overlays").iterdir())) == LIMIT  # overlays: all, ERROR included
    # the page's address before the first part, and no holding on after them without a terminal
    assert re.search(r"^Page: http://127\.0\.0\.1:\d+/  \(the line page", proc.stdout, re.M)
    assert proc.stdout.index("Page: http") < proc.stdout.index("#1 ")
    assert "stays up" not in proc.stdout
    return records


def test_demo_against_a_running_broker(mosquitto, tmp_path):
    out = tmp_path / "demo-out"
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/verdict") as sub:
        proc = run_demo(out, mosquitto.port)
        records = check_output(proc, out)
        published = [m.json() for m in sub.wait_for(LIMIT)]
    assert "MQTT: using the broker at 127.0.0.1" in proc.stdout
    assert [p["seq"] for p in published] == [r["seq"] for r in records]
    assert [p["verdict"] for p in published] == [r["verdict"] for r in records]

    # A second run starts with fresh parts and files; seq goes on from where it was.
    proc = run_demo(out, mosquitto.port)
    assert proc.returncode == 0
    again = [json.loads(line)["seq"] for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert again == list(range(LIMIT + 1, 2 * LIMIT + 1))


def test_demo_runs_the_training_free_bundle_with_one_flag(mosquitto, tmp_path):
    """--product button-patchcore: the same parts through the feature-memory bundle, still
    without torch (LEAN_RUN): every defect scores above every good part, no good part is
    rejected and at most one faint defect passes the calibrated threshold on this run."""
    out = tmp_path / "demo-out"
    proc = run_demo(out, mosquitto.port, "--product", "button-patchcore")
    records = check_output(proc, out)
    assert "parts of button-patchcore" in proc.stdout
    assert {(r["product"], r["model"]["name"]) for r in records} == {
        ("button-patchcore", "patchcore")
    }
    assert "image AUROC on this run: 1.000" in proc.stdout
    judged = [r for r in records if r["verdict"] != "ERROR"]
    good = [r["verdict"] for r in judged if "_good" in r["part_id"]]
    defects = [r["verdict"] for r in judged if "_good" not in r["part_id"]]
    assert set(good) == {"OK"} and defects.count("OK") <= 1


def test_demo_names_the_bundles_there_are_when_asked_for_another(tmp_path):
    proc = run_demo(tmp_path / "demo-out", free_port(), "--product", "nope")
    assert proc.returncode == 2
    assert "no product bundle 'nope'" in proc.stderr and "button-patchcore" in proc.stderr


def test_demo_starts_its_own_broker_when_none_answers(tmp_path):
    out = tmp_path / "demo-out"
    proc = run_demo(out, free_port())
    assert "no broker answered, started an embedded one" in proc.stdout
    check_output(proc, out)


def test_demo_falls_back_to_amqtt_without_mosquitto(tmp_path):
    """A newcomer's machine without mosquitto: the pure-Python broker (MQTT 3.1.1) carries it."""
    out = tmp_path / "demo-out"
    no_mosquitto = (
        "import sys, inspectd.mqtt.broker as b; b.find_mosquitto = lambda: None; " + LEAN_RUN
    )
    args = ["demo", "--out", str(out), "--limit", str(LIMIT), "--mqtt-port", str(free_port())]
    proc = subprocess.run(
        [sys.executable, "-c", no_mosquitto, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "started an embedded one" in proc.stdout and "(MQTT 3.1.1)" in proc.stdout
    check_output(proc, out)
