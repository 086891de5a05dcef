"""The page against stations made of their messages (the page's own process and a private
mosquitto; a station here is its retained status and health and a verdict, published with the
contract's builders, and for one test an older station's answer): the wall display with 6 and 9
stations, and a product switch on a station too old to list its products."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inspectd.contract.messages import (
    encode_json,
    error_message,
    health_message,
    status_message,
    verdict_messages,
)
from inspectd.contract.topics import Topics
from inspectd.contract.verdict import Verdict
from inspectd.contract.vocabulary import ErrorCode, StationState
from inspectd.mqtt.broker import LocalBroker

from support.contract import verdict_record
from support.ui import (
    OPERATOR,
    PAGE_TEST_MARKS,
    SMALLEST_TEXT_JS,
    operator_page_config,
    ui_process,
    wait_until,
)

pytestmark = PAGE_TEST_MARKS

FIELDS = {"boot_id": "b" * 32, "version": "0.1.0", "product": "button", "model_sha256": "ab" * 32}


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, mqtt.Client]]:
    tmp = tmp_path_factory.mktemp("wall")
    with LocalBroker.start_mosquitto() as broker:
        (tmp / "ui.yaml").write_text(json.dumps(operator_page_config(broker.port)))
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            with ui_process(tmp / "ui.yaml") as (_, url):
                yield url, client
        finally:
            client.loop_stop()
            client.disconnect()


def add_station(client: mqtt.Client, n: int) -> None:
    topics = Topics(f"inspectd/v1/plant/l1/cam{n}")
    health = {"state": "ok", "problems": [], "product": "button", "model_sha256": "ab" * 32}
    ng = n % 3 == 0
    record = verdict_record(
        Verdict.NG if ng else Verdict.OK,
        station=f"cam{n}",
        part_id=f"P{n:05d}",
        score=0.3 if ng else 0.1,
        seq=1,
    )
    messages = [
        status_message(topics, StationState.ONLINE, FIELDS),
        health_message(topics, encode_json(health)),
        *verdict_messages(topics, record, 10.0),
    ]
    for m in messages:
        client.publish(m.topic, m.payload, qos=1, retain=m.retain).wait_for_publish(5)


# what must stay readable on every tile; the rest may give way
ESSENTIAL = ("name", "state", "last-verdict", "counts")
ELEMENTS_JS = """(tile) => ["h2.name", "[data-testid=state]", "[data-testid=last-verdict]",
  "[data-testid=counts]"].map((sel) => {
    const el = tile.querySelector(sel), r = el && el.getBoundingClientRect();
    return r ? [r.top, r.bottom, r.height] : null; })"""


@pytest.mark.parametrize("stations", [6, 9])
def test_every_station_fits_the_wall_without_scrolling(
    line: tuple[str, mqtt.Client], browser: Any, stations: int
) -> None:
    url, client = line
    for n in range(1, stations + 1):
        add_station(client, n)  # retained: again for the second size is harmless
    context = browser.new_context(
        viewport={"width": 1920, "height": 1080},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    wall = context.new_page()
    wall.goto(f"{url}/#/wall")
    tiles = wall.locator("[data-testid=tile]")
    wait_until(lambda: tiles.count() == stations, 10, f"{stations} tiles")
    # before: 6 stations took 1370 px, the second row of tiles below the screen's edge
    assert wall.evaluate("document.documentElement.scrollHeight") <= 1080
    for k in range(stations):
        t = tiles.nth(k)
        box = t.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 1080, (k, box)
        shown = t.evaluate(ELEMENTS_JS)
        for what, rect in zip(ESSENTIAL, shown, strict=True):
            assert rect is not None and rect[2] > 0, (k, what)
            # inside the tile, not cut by its edge
            assert box["y"] <= rect[0] and rect[1] <= box["y"] + box["height"], (k, what, rect)
        least, which = wall.evaluate(SMALLEST_TEXT_JS, t.element_handle())
        assert least >= 28, f"tile {k}: {which!r} is {least} px"
    context.close()


def test_a_station_too_old_to_list_its_products_gets_a_typed_name_still_confirmed(
    line: tuple[str, mqtt.Client], browser: Any
) -> None:
    """An older station refuses ``products`` (unknown_command): the page offers a text field
    instead of the list, and the name typed is still asked about before it is sent."""
    url, client = line
    topics = Topics("inspectd/v1/plant/l1/old")
    sent: list[dict[str, Any]] = []
    got = threading.Event()

    def old_station(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        if msg.topic == topics.cmd("products", "set"):
            refusal = error_message(
                topics,
                ErrorCode.UNKNOWN_COMMAND,
                "'products' is not a command; allowed: product, reload_thresholds",
                source_topic=msg.topic,
                correlation_data=corr,
            )
            c.publish(refusal.topic, refusal.payload, qos=1, properties=props_of(refusal))
        elif msg.topic == topics.cmd("product", "set"):
            sent.append(json.loads(msg.payload))
            got.set()

    client.message_callback_add(topics.cmd_filter, old_station)
    client.subscribe(topics.cmd_filter, qos=1)
    status = status_message(topics, StationState.ONLINE, FIELDS)
    client.publish(status.topic, status.payload, qos=1, retain=True).wait_for_publish(5)
    health = health_message(topics, encode_json({"state": "ok", "problems": []}))
    client.publish(health.topic, health.payload, qos=1, retain=True).wait_for_publish(5)

    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    page = context.new_page()
    page.goto(f"{url}/#/station/{urllib.parse.quote(topics.base, safe='')}")
    typed = page.locator("[data-testid=product-name]")
    typed.wait_for(timeout=10_000)  # the field, once the station refused to list its products
    assert page.locator("[data-testid=product-choice]").count() == 0
    typed.fill("button-b")
    page.locator("[data-testid=switch]").click()
    confirm = page.locator("[data-testid=confirm]")
    assert "to button-b?" in confirm.inner_text()
    assert not got.wait(1.0)  # asked first: nothing sent yet
    confirm.locator("[data-testid=confirm-yes]").click()
    assert got.wait(10), "the product command never reached the station"
    assert sent == [{"product": "button-b"}]
    context.close()


def props_of(message: Any) -> Properties:
    """MQTT 5 properties of a contract message (its correlation data, for the page to match)."""
    props = Properties(PacketTypes.PUBLISH)
    if message.correlation_data is not None:
        props.CorrelationData = message.correlation_data
    return props
