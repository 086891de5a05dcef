"""Teaching from the line page (issue 34, item 4): an operator starts a teach from the next parts,
sees them taken and the version written with its figures, accepts it (the station switches to
it), then rolls back. Real parts as in test_ui_operator.py: mosquitto, a station (`inspectd
run`, watched folder, archive), `inspectd ui` as its own process, Debian's chromium."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspectd.bundle import load_bundle
from inspectd.mqtt.broker import LocalBroker
from inspectd.synthetic import render_part

from support.daemon_process import Daemon
from support.mqtt_client import Subscriber
from support.paths import BUNDLE
from support.station import BASE, station_config
from support.ui import (
    OPERATOR,
    PAGE_TEST_MARKS,
    drop_part,
    operator_page_config,
    ui_process,
    wait_until,
)

pytestmark = PAGE_TEST_MARKS


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[Path, str, Subscriber]]:
    (tmp_path / "frames").mkdir()
    products = tmp_path / "products"
    shutil.copytree(BUNDLE, products / "button")
    with LocalBroker.start_mosquitto() as broker:
        station_config(
            tmp_path,
            port=broker.port,
            products_dir=str(products),
            camera={"watch": {"enabled": True, "settle_s": 0, "poll_s": 0.05}},
            archive={"enabled": True, "dir": str(tmp_path / "archive")},
            output={"dir": None},
        )
        ui_cfg = {**operator_page_config(broker.port), "review_timeout_s": 30}
        (tmp_path / "ui.yaml").write_text(json.dumps(ui_cfg))
        with (
            Subscriber(broker.host, broker.port, f"{BASE}/verdict") as verdicts,
            Daemon(tmp_path / "station.yaml", "station") as station,
            ui_process(tmp_path / "ui.yaml") as (_, url),
        ):
            station.wait_event("station.ready", timeout=30)
            yield products, url, verdicts


def test_an_operator_teaches_accepts_and_rolls_back_from_the_page(
    browser: Any, line: tuple[Path, str, Subscriber], tmp_path: Path
) -> None:
    products, url, verdicts = line
    frames = tmp_path / "frames"
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    page = context.new_page()
    first = drop_part(frames, verdicts, "g000", render_part(31, 0, None)[0])
    assert first["model"]["version"] == 1
    page.goto(f"{url}/#/station/{urllib.parse.quote(BASE, safe='')}")
    panel = page.locator("[data-testid=teach]")
    panel.wait_for(timeout=10_000)
    state = page.locator("[data-testid=teach-state]")

    page.locator("[data-testid=teach-count]").fill("8")
    page.locator("[data-testid=teach-start]").click()
    confirm = page.locator("[data-testid=confirm]")
    assert "Teach button from the next 8 parts?" in confirm.inner_text()
    confirm.locator("[data-testid=confirm-yes]").click()
    wait_until(lambda: "taking parts, 0 of 8" in state.inner_text(), 10, "the teach started")
    taken = [
        drop_part(frames, verdicts, f"t{i:03d}", render_part(31, 1 + i, None)[0]) for i in range(8)
    ]
    assert {(v["verdict"], v["error"]) for v in taken} == {("NG", "teach")}  # held, never OK
    wait_until(lambda: "version 2 written, not active" in state.inner_text(), 120, "version 2")
    assert "4 parts fitted, 4 calibrated" in state.inner_text()
    panel.screenshot(path=str(tmp_path / "teach-written.png"))  # docs/ui-teach.png

    page.locator("[data-testid=teach-accept]").click()
    assert "Make button version 2 active?" in page.locator("[data-testid=confirm]").inner_text()
    page.locator("[data-testid=confirm-yes]").click()
    answer = page.locator("[data-testid=answer]")
    wait_until(lambda: "accept: done" in answer.inner_text(), 30, "the accept's answer")
    assert "switched true" in answer.inner_text()
    after = drop_part(frames, verdicts, "g001", render_part(31, 20, None)[0])
    assert after["model"]["version"] == 2 and after["model"]["name"] == "patchcore"
    active = products / "button" / "versions" / "active.yaml"
    assert "by: alice" in active.read_text()  # the login signs it

    page.locator("[data-testid=rollback]").click()
    page.locator("[data-testid=confirm-yes]").click()
    wait_until(lambda: "rollback: done" in answer.inner_text(), 30, "the rollback's answer")
    back = drop_part(frames, verdicts, "g002", render_part(31, 21, None)[0])
    assert back["model"]["version"] == 1
    assert load_bundle(products / "button").version == 1
    page.screenshot(path=str(tmp_path / "teach.png"), full_page=True)
    context.close()
