"""A verdict decided after its trigger's deadline (`late`, docs/plc.md) is marked late wherever
the page shows a verdict: the tile, the live part, the reject strip and the part view.

Real parts as in test_ui.py: mosquitto, a station (`inspectd run`) triggered over MQTT with its
engine slowed on purpose (INSPECTD_SLOW_ENGINE_MS) so that a request with a short deadline is
answered NG late and its verdict follows flagged late, `inspectd ui` as its own process, and
Debian's chromium.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from inspectd.mqtt.broker import LocalBroker
from inspectd.synthetic import render_part

from support.daemon_process import Daemon
from support.requester import Requester, Station, request_station_config, wait_online
from support.station import BASE, write_png
from support.ui import (
    OPERATOR,
    PAGE_TEST_MARKS,
    contrast_failures,
    operator_page_config,
    ui_process,
    wait_until,
)

pytestmark = PAGE_TEST_MARKS


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Station, str]]:
    """The station (its camera: a good part, then a cracked one, over and over) and the page's
    URL."""
    tmp = tmp_path_factory.mktemp("ui-late")
    frames = tmp / "frames"
    frames.mkdir()
    write_png(frames / "01_good.png", render_part(11, 2, None)[0])
    write_png(frames / "02_crack.png", render_part(11, 107, "crack")[0])
    with LocalBroker.start_mosquitto() as broker:
        request_station_config(
            tmp,
            broker.port,
            frames,
            camera={"trigger": "mqtt"},
            mqtt={"overlays": "all", "health_interval_s": 1, "stats_interval_s": 1},
            archive={"enabled": True, "dir": str(tmp / "archive"), "ok_every": 1},
        )
        ui_cfg = operator_page_config(broker.port)
        (tmp / "ui.yaml").write_text(json.dumps(ui_cfg))
        req = Requester(broker.host, broker.port, [f"{BASE}/#", "requester/#"])
        # every inference takes 600 ms: past a 100 ms deadline, well within the default one
        env = {"INSPECTD_SLOW_ENGINE_MS": "600"}
        with (
            req,
            Daemon(tmp / "station.yaml", "station", env=env) as daemon,
            ui_process(tmp / "ui.yaml") as (_, url),
        ):
            wait_online(req, timeout=60)
            yield Station(daemon, req, tmp), url


def test_a_late_verdict_is_marked_late_on_the_tile_the_live_part_the_strip_and_the_part_view(
    shop: tuple[Station, str], browser: Any
) -> None:
    st, url = shop
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    page = context.new_page()
    page.goto(url + "/")
    tile = page.locator(f'[data-testid=tile][data-base="{BASE}"]')

    # in time: no mark
    good = st.trigger("in-time", "good-1").json()
    assert good["status"] == "done" and good["verdict"]["late"] is False, good
    wait_until(lambda: "good-1" in tile.inner_text(), 10, "the part on the tile")
    assert tile.locator("[data-testid=late]").count() == 0

    # answered NG late at its deadline; the verdict follows, flagged late
    answer = st.trigger("too-late", "crack-1", deadline_ms=100).json()
    assert answer["status"] == "late" and answer["verdict"]["verdict"] == "NG", answer
    v = st.wait_verdict("too-late")
    assert v["late"] is True and v["verdict"] == "NG" and v["part_id"] == "crack-1", v
    wait_until(lambda: "crack-1" in tile.inner_text(), 10, "the late part on the tile")
    assert tile.locator("[data-testid=late]").inner_text().lower() == "late"

    tile.click()
    live = page.locator("[data-testid=live]")
    live.locator("[data-testid=late]").wait_for(timeout=5000)
    assert "deadline" in live.locator("[data-testid=late-why]").inner_text()
    assert not contrast_failures(page, "[data-testid=live]")
    card = page.locator(f"[data-testid=reject][data-seq='{v['seq']}']")
    card.locator("[data-testid=late]").wait_for(timeout=5000)
    assert page.locator("[data-testid=reject] [data-testid=late]").count() == 1

    card.locator("[data-testid=open]").click()
    view = page.locator("[data-testid=part-view]")
    view.wait_for(timeout=8000)
    assert view.locator("h2 [data-testid=late]").count() == 1
    assert "deadline" in view.locator("[data-testid=part-facts]").inner_text()
    context.close()
