"""Teaching a product (issue 34): `inspectd teach` from a folder of good buttons, the station
taking its own parts to teach, refit from reviewed false rejects, and a kill -9 during the fit.
The real CLI and daemon in their own processes, the folder camera, a private mosquitto; the
model is patchcore (a fit of a few dozen parts at 224 px takes seconds here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inspectd.bundle import BundleError, load_bundle
from inspectd.synthetic import DEFECTS, render_part
from inspectd.synthetic.style import DEFECT_INDEX_STRIDE, ButtonStyle
from inspectd.versions import layout

from support.daemon_process import Daemon
from support.paths import REPO
from support.products import copy_bundle
from support.requester import Requester, Station, wait_online
from support.station import BASE, VERDICT, jsonl, station_config, write_png

SEED = 21
# light from another side and a wider exposure range than the first teach saw (ButtonStyle's
# defaults: azimuth 225 +- 15 degrees, gain +- 8 %)
SHIFTED = ButtonStyle(light_jitter_deg=70.0, brightness=0.16)


def teach_process(*args: str) -> subprocess.Popen[str]:
    """``inspectd teach`` started, not waited for (its output piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "inspectd", "teach", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def teach_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inspectd", "teach", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def write_good(
    folder: Path,
    n: int,
    *,
    seed: int = SEED,
    split: str = "train",
    start: int = 0,
    style: ButtonStyle = ButtonStyle(),
    prefix: str = "good",
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + n):
        name = f"{prefix}_{seed}_{i:04d}"
        write_png(folder / f"{name}.png", render_part(seed, i, None, style, split)[0])
        names.append(name)
    return names


def write_defects(folder: Path, per_type: int, *, seed: int = SEED) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, d in enumerate(DEFECTS):
        for i in range(per_type):
            image = render_part(seed, (k + 1) * DEFECT_INDEX_STRIDE + i, d, split="test")[0]
            name = f"defect_{d}_{i:02d}"
            write_png(folder / f"{name}.png", image)
            names.append(name)
    return names


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> tuple[Path, Path, dict[str, Any]]:
    """Product ``taught`` (new: no bundle before) taught from 60 good buttons and accepted."""
    tmp = tmp_path_factory.mktemp("taught")
    products = tmp / "products"
    write_good(tmp / "teach", 60)
    proc = teach_cli(
        "--product",
        "taught",
        "--products",
        str(products),
        "--images",
        str(tmp / "teach"),
        "--by",
        "alice",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    return tmp, products, out


def test_a_new_product_is_taught_from_60_good_parts_and_then_judges_fresh_parts(
    taught, mosquitto, tmp_path
):
    _, products, out = taught
    product = products / "taught"
    assert out["version"] == 2 and out["active"] is False and out["origin"] == "teach"
    f = out["figures"]
    assert (f["n_fit"], f["n_good"]) == (30, 30) and f["family"] == "patchcore"
    assert f["frr_bound"] == pytest.approx(1 - 0.05 ** (1 / 30), rel=1e-3)  # stated, 30 parts
    assert out["seconds"] < 240
    v = load_bundle(product, 2)
    assert v.manifest.version is not None and v.manifest.version.parent is None
    parts = (v.path / "parts.sha256").read_text().splitlines()
    assert sorted(line.split()[1] for line in parts) == ["fit"] * 30 + ["good"] * 30
    # written, not active: no station can load it before it is accepted
    with pytest.raises(BundleError):
        load_bundle(product)
    assert not (product / "versions" / "active.yaml").exists()

    proc = teach_cli("--product", "taught", "--products", str(products), "--accept", "2")
    assert proc.returncode == 0, proc.stderr
    assert load_bundle(product).version == 2

    # the real daemon on 40 fresh good parts and 10 of each defect type
    frames = tmp_path / "frames"
    good = write_good(frames, 40, split="test", seed=SEED + 1)
    bad = write_defects(frames, 10, seed=SEED + 1)
    config = station_config(
        tmp_path,
        port=mosquitto.port,
        product="taught",
        products_dir=products,
        camera={"path": frames},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "inspectd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdicts = {r["part_id"]: r for r in jsonl(tmp_path)}
    assert len(verdicts) == 100
    assert {r["model"]["version"] for r in verdicts.values()} == {2}
    assert all(verdicts[p]["verdict"] == "NG" for p in bad)  # all six defect types
    false_rejects = [p for p in good if verdicts[p]["verdict"] != "OK"]
    # the bound is what 30 calibration parts can state (9.5 % at 95 %); the memory of all 60
    # parts scores fresh parts lower than the one calibrated, so few or none are rejected
    assert len(false_rejects) <= 1, false_rejects
    good_scores = np.array([verdicts[p]["score"] for p in good])
    bad_scores = np.array([verdicts[p]["score"] for p in bad])
    # recall at 1 % FRR on this fresh set: 40 good parts allow no false reject
    assert (bad_scores > good_scores.max()).mean() >= 0.95


def test_the_station_takes_its_next_parts_to_teach_never_ok_and_switches_on_accept(
    mosquitto, tmp_path
):
    products = tmp_path / "products"
    copy_bundle(products, "button")  # running version 1 (the ae bundle)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = station_config(
        tmp_path,
        port=mosquitto.port,
        products_dir=products,
        camera={"path": incoming, "watch": {"enabled": True, "settle_s": 0.2, "poll_s": 0.1}},
    )
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"])
    with Daemon(config) as daemon, req:
        wait_online(req)
        st = Station(daemon, req, tmp_path)
        cli = teach_process(
            "--product",
            "button",
            "--config",
            str(config),
            "--count",
            "20",
            "--by",
            "carol",
            "--json",
            "--timeout",
            "240",
        )
        req.wait(lambda m: m.topic == f"{BASE}/teach" and m.json()["state"] == "collecting")
        # one teach at a time; malformed ones and discarding the running version refused
        busy = st.error_for(st.command("teach", {"product": "button", "count": 5}))
        assert busy["error"] == "command_failed" and "under way" in busy["detail"], busy
        small = st.error_for(st.command("teach", {"product": "button", "count": 2}))
        assert "count: 2" in small["detail"], small
        running = st.error_for(st.command("discard", {"product": "button", "version": 1}))
        assert "is active" in running["detail"], running
        write_good(incoming, 20, seed=SEED + 2)
        stdout, stderr = cli.communicate(timeout=300)
        assert cli.returncode == 0, stderr[-3000:]
        event = json.loads(stdout.splitlines()[-1])
        assert event["state"] == "written" and event["version"] == 2, event
        taken = [m.json() for m in req.messages(VERDICT)]
        assert len(taken) == 20
        # held, never OK: nobody judged them
        assert {(v["verdict"], v["error"]) for v in taken} == {("NG", "teach")}
        states = [m.json()["state"] for m in req.messages(f"{BASE}/teach")]
        assert states[0] == "collecting" and states[-2:] == ["fitting", "written"]
        assert layout.active_version(products / "button") == 1  # not active until accepted

        proc = teach_cli("--product", "button", "--config", str(config), "--accept", "2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "switched to button version 2" in proc.stdout
        write_good(incoming, 1, seed=SEED + 3, split="test", prefix="after")
        after = req.wait(VERDICT, n=21, timeout=30)[-1].json()
        assert after["model"]["version"] == 2 and after["model"]["name"] == "patchcore"
        assert after["error"] is None


def review(st: Station, verdict: dict[str, Any], label: str) -> None:
    corr = st.command(
        "review", {"seq": verdict["seq"], "part_id": verdict["part_id"], "label": label}
    )
    answer = st.answer(corr).json()
    assert answer["ok"], answer


def ask(st: Station, name: str, args: dict[str, Any]) -> dict[str, Any]:
    answer = st.answer(st.command(name, args)).json()
    assert answer.get("ok"), answer
    return answer


def test_refit_from_reviewed_false_rejects_lowers_false_rejects_on_a_lighting_shift(
    taught, mosquitto, tmp_path
):
    import shutil

    tmp, source, _ = taught
    products = tmp_path / "products"
    shutil.copytree(source, products)
    teach_cli("--product", "taught", "--products", str(products), "--accept", "2")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = station_config(
        tmp_path,
        port=mosquitto.port,
        product="taught",
        products_dir=products,
        camera={"path": incoming, "watch": {"enabled": True, "settle_s": 0.2, "poll_s": 0.1}},
        archive={"enabled": True},
    )
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"])
    with Daemon(config) as daemon, req:
        wait_online(req, product="taught")
        st = Station(daemon, req, tmp_path)

        def judge(names_of: Any, n_before: int) -> list[dict[str, Any]]:
            names = names_of()
            got = req.wait(VERDICT, n=n_before + len(names), timeout=120)
            return [m.json() for m in got[n_before:]]

        # the line's light changes: the first version rejects many good parts
        shifted = judge(
            lambda: write_good(incoming, 30, seed=SEED + 4, style=SHIFTED, prefix="s1"), 0
        )
        rejected = [v for v in shifted if v["verdict"] != "OK"]
        assert len(rejected) >= 5, [v["score"] for v in shifted]
        for v in rejected:
            review(st, v, "false_reject")
        defects = judge(lambda: write_defects(incoming, 1, seed=SEED + 5), 30)
        for v in defects:
            assert v["verdict"] == "NG"
            review(st, v, "true_defect")
        # a second set with the same shift, judged by the first version
        before = judge(
            lambda: write_good(incoming, 30, seed=SEED + 6, style=SHIFTED, prefix="s2a"), 36
        )

        answer = ask(st, "refit", {"product": "taught", "by": "bob"})
        assert answer["state"] == "fitting"
        written = req.wait(
            lambda m: m.topic == f"{BASE}/teach" and m.json()["state"] in ("written", "failed"),
            timeout=300,
        )[0].json()
        assert written["state"] == "written", written
        assert written["kind"] == "refit" and written["version"] == 3
        f = written["figures"]
        assert f["n_reviewed"] == len(rejected)
        assert f["n_defects"] == 6 and f["defects_caught"] == 6  # the known defects still caught
        listed = ask(st, "versions", {"product": "taught"})["versions"]
        assert [(r["id"], r["origin"], r["active"]) for r in listed] == [
            (2, "teach", True),
            (3, "refit", False),
        ]
        accepted = ask(st, "accept", {"product": "taught", "version": 3, "by": "bob"})
        assert accepted["switched"] is True and accepted["previous"] == 2

        # the same shifted parts again, judged by the refitted version
        after = judge(
            lambda: write_good(incoming, 30, seed=SEED + 6, style=SHIFTED, prefix="s2b"), 66
        )
        assert {v["model"]["version"] for v in after} == {3}
        fr_before = sum(v["verdict"] != "OK" for v in before)
        fr_after = sum(v["verdict"] != "OK" for v in after)
        assert fr_after < fr_before, (fr_before, fr_after)

        # and back in one command
        back = ask(st, "rollback", {"product": "taught"})
        assert back["version"] == 2 and back["switched"] is True


def test_a_kill_during_the_fit_leaves_the_running_version_active(tmp_path):
    products = tmp_path / "products"
    product = copy_bundle(products, "button")
    before = load_bundle(product)
    write_good(tmp_path / "teach", 60)
    proc = teach_process(
        "--product", "button", "--products", str(products), "--images", str(tmp_path / "teach")
    )
    deadline = time.monotonic() + 120
    work: list[Path] = []
    while time.monotonic() < deadline and not work:  # the fit runs in its work folder
        work = list((product / "versions").glob(".work-*"))
        time.sleep(0.05)
    assert work, "the teach never started its fit"
    time.sleep(1.0)  # inside the feature extraction or the coreset
    assert not list(work[0].glob("*/manifest.yaml")), "the fit ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    after = load_bundle(product)
    assert (after.version, after.model_sha256) == (before.version, before.model_sha256)
    assert layout.version_ids(product) == [1]
    assert not list((product / "versions").glob(".new-*"))
    # the next teach removes what the killed one left, and writes version 2
    again = teach_cli(
        "--product",
        "button",
        "--products",
        str(products),
        "--images",
        str(tmp_path / "teach"),
        "--json",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.splitlines()[-1])["version"] == 2
    assert not list((product / "versions").glob(".work-*"))
    assert load_bundle(product).version == 1  # still: a teach does not activate


def test_a_refit_after_a_recalibration_starts_from_the_taught_parts_too(taught, tmp_path):
    import shutil

    from inspectd.train.teach import taught_parts

    tmp, source, _ = taught
    products = tmp_path / "products"
    shutil.copytree(source, products)
    product = products / "taught"
    teach_cli("--product", "taught", "--products", str(products), "--accept", "2")
    more = tmp_path / "more"
    write_good(more, 3, seed=SEED + 7, split="test")
    cal = subprocess.run(
        [
            sys.executable,
            "-m",
            "inspectd",
            "calibrate",
            "--product",
            "taught",
            "--products",
            str(products),
            "--images",
            str(more),
            "--force",
            "--replace",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert cal.returncode == 0, cal.stderr[-3000:]
    assert load_bundle(product).version == 3  # a calibration: it lists its 3 parts only
    assert load_bundle(product, 2).version == 2  # its parent's sealed files untouched
    parts = taught_parts(product)
    assert len(parts) == 63  # and the 60 of the teach it was made from
    assert {p.parent for p in parts} == {tmp / "teach", more}
