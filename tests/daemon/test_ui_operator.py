"""The line page as an operator works with it (issue 35): answers that stay, focus that stays,
the live part's own overlay, a histogram about the good parts, a phone-width page, reviews with
a confirmation and an undo, products offered rather than typed, a small calibration refused by
reload, readable tiles for a frozen or stopped station.

Real parts as in test_ui.py: mosquitto, a station (`inspectd run`, watched folder, archive of
every part, NG overlays only: the default), `inspectd ui` as its own process, Debian's chromium.
The station runs on a copy of the test bundle (and a second product, `button-b`), so the tests
may recalibrate and switch it. Tests run in file order; the last one stops the station.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml

from inspectd.bundle import load_bundle
from inspectd.mqtt.broker import LocalBroker, free_port
from inspectd.synthetic import render_part

from support.daemon_process import Daemon
from support.mqtt_client import Subscriber
from support.paths import BUNDLE, REPO
from support.station import BASE, station_config
from support.ui import (
    OPERATOR,
    PAGE_TEST_MARKS,
    SMALLEST_TEXT_JS,
    contrast_failures,
    drop_part,
    operator_page_config,
    sideways_overflow,
    ui_process,
    wait_until,
)

pytestmark = PAGE_TEST_MARKS


class Shop:
    """The running parts, and how to feed the station."""

    def __init__(
        self, tmp: Path, station: Daemon, url: str, verdicts: Subscriber, ui_cfg: dict[str, Any]
    ) -> None:
        self.tmp, self.station, self.url, self.verdicts = tmp, station, url, verdicts
        self.ui_cfg = ui_cfg
        self.frames = tmp / "frames"
        self.archive = tmp / "archive"
        self.products = tmp / "products"
        self.n = 0

    def drop(self, kind: str, seed: int | None = None) -> dict[str, Any]:
        """One rendered part into the watched folder; its verdict, once the station sent it."""
        defect = None if kind == "good" else kind
        if seed is None:
            seed = 2 + self.n if defect is None else 107 + self.n
        image = render_part(11, seed, defect)[0]
        self.n += 1
        return drop_part(self.frames, self.verdicts, f"q{self.n:03d}_{kind}", image)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("ui-operator")
    (tmp / "frames").mkdir()
    products = tmp / "products"
    shutil.copytree(BUNDLE, products / "button")
    shutil.copytree(BUNDLE, products / "button-b")
    manifest = yaml.safe_load((products / "button-b" / "manifest.yaml").read_text())
    manifest["name"] = "button-b"
    (products / "button-b" / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with LocalBroker.start_mosquitto() as broker:
        station_config(
            tmp,
            port=broker.port,
            products_dir=str(products),
            camera={"watch": {"enabled": True, "settle_s": 0, "poll_s": 0.05}},
            mqtt={"health_interval_s": 1, "stats_interval_s": 1},  # overlays: ng, the default
            archive={"enabled": True, "dir": str(tmp / "archive"), "ok_every": 1},
            output={"dir": None},
        )
        ui_cfg = operator_page_config(broker.port)
        (tmp / "ui.yaml").write_text(json.dumps(ui_cfg))
        with (
            Subscriber(broker.host, broker.port, f"{BASE}/verdict") as verdicts,
            Daemon(tmp / "station.yaml", "station") as station,
            ui_process(tmp / "ui.yaml") as (_, url),
        ):
            station.wait_event("station.ready", timeout=30)
            yield Shop(tmp, station, url, verdicts, ui_cfg)


@pytest.fixture(scope="module")
def page(browser: Any, shop: Shop) -> Iterator[Any]:
    """A tablet-sized page, logged in as the operator, on the station view."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    page = context.new_page()
    shop.drop("good")
    page.goto(f"{shop.url}/#/station/{urllib.parse.quote(BASE, safe='')}")
    page.locator("[data-testid=station-part]").wait_for(timeout=10_000)
    yield page
    context.close()


def station_view(page: Any, shop: Shop) -> None:
    page.goto(f"{shop.url}/#/station/{urllib.parse.quote(BASE, safe='')}")
    page.locator("[data-testid=station-part]").wait_for(timeout=10_000)


def shows_part(page: Any, v: dict[str, Any]) -> bool:
    """The station view shows this verdict as its live part (it has been rebuilt since; after a
    tap the view holds still for 4 s, so callers wait 8)."""
    return page.locator("[data-testid=station-part]").inner_text().startswith(f"#{v['seq']} ")


def tile(page: Any) -> Any:
    return page.locator(f'[data-testid=tile][data-base="{BASE}"]')


def stored(shop: Shop, label: str, seq: int) -> list[Path]:
    return list((shop.archive / "reviews" / label).glob(f"*/{seq:010d}-*.json"))


# -- the page's fixed bugs --------------------------------------------------------------------


def test_the_favicon_is_linked_and_served_without_credentials(shop: Shop) -> None:
    # before: /favicon.ico was 401 (no credentials) or 404, and the page linked none
    with urllib.request.urlopen(f"{shop.url}/favicon.ico", timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
        assert r.read().startswith(b"<svg")
    with urllib.request.urlopen(f"{shop.url}/static/index.html", timeout=5) as r:
        assert '<link rel="icon" href="/static/favicon.svg"' in r.read().decode()


def test_the_live_part_shows_its_own_overlay_never_the_previous_reject_s(
    shop: Shop, page: Any
) -> None:
    # NG overlays only: the good part after a crack has none. The page used to show the
    # crack's overlay (#n) as the big picture beside "OK #n+1".
    crack = shop.drop("crack")
    assert crack["verdict"] == "NG"
    wait_until(lambda: shows_part(page, crack), 8, "the crack as the live part")
    overlay = page.locator("[data-testid=live-overlay]")
    overlay.wait_for(timeout=5000)
    assert overlay.get_attribute("data-seq") == str(crack["seq"])
    good = shop.drop("good")
    assert good["verdict"] == "OK"
    wait_until(lambda: shows_part(page, good), 8, "the good part as the live part")
    assert page.locator("[data-testid=live-overlay]").count() == 0
    assert (
        f"no overlay of #{good['seq']}"
        in page.locator("[data-testid=no-live-overlay]").inner_text()
    )


def test_an_answer_says_waiting_until_it_comes_and_stays_when_parts_arrive(
    shop: Shop, page: Any
) -> None:
    answer = page.locator("[data-testid=answer]")
    shop.station.signal(signal.SIGSTOP)  # the station cannot answer yet
    try:
        page.locator("[data-testid=reload]").click()
        wait_until(lambda: answer.count() == 1, 5, "the answer box")
        text = answer.inner_text()
        # before: "reload_thresholds: done — sending …" while nothing had answered
        assert "waiting for its answer" in text and "done" not in text, text
    finally:
        shop.station.signal(signal.SIGCONT)
    wait_until(lambda: "reload_thresholds: done" in answer.inner_text(), 8, "the station's answer")
    v = shop.drop("good")
    wait_until(lambda: shows_part(page, v), 8, "the view rebuilt with the new part")
    # before: the rebuild emptied the answer box
    assert "reload_thresholds: done" in answer.inner_text()


def test_keyboard_focus_stays_on_its_control_when_parts_arrive(shop: Shop, page: Any) -> None:
    reload = page.locator("[data-testid=reload]")
    reload.focus()
    old = reload.element_handle()
    v = shop.drop("good")
    wait_until(lambda: shows_part(page, v), 8, "the view rebuilt with the new part")
    assert not page.evaluate("(el) => el.isConnected", old)  # the button was rebuilt ...
    # ... and focus is on the new one (before: on <body>, so Tab started over from the top)
    assert page.evaluate("() => document.activeElement.dataset.testid") == "reload"

    page.goto(f"{shop.url}/#/")
    t = tile(page)
    t.wait_for()
    t.focus()
    old = t.element_handle()
    ok = t.locator("[data-testid=count-OK]")
    before = ok.inner_text()
    shop.drop("good")
    wait_until(lambda: ok.inner_text() != before, 5, "the tile rebuilt with the new part")
    assert not page.evaluate("(el) => el.isConnected", old)
    assert page.evaluate("() => document.activeElement.dataset.base") == BASE
    station_view(page, shop)


def test_the_histogram_axis_is_about_the_good_parts_and_its_labels_do_not_overprint(
    shop: Shop, page: Any
) -> None:
    # 0.43 with the test bundle, threshold 0.15: before, the axis ran to it and the good parts
    # and the threshold shared the first third
    assert shop.drop("missing_hole", seed=110)["score"] > 0.4
    v = shop.drop("good")
    wait_until(lambda: shows_part(page, v), 8, "the view with the new parts")
    detail = page.evaluate(
        "(base) => fetch('/api/station?base=' + encodeURIComponent(base)).then(r => r.json())",
        BASE,
    )
    hist = detail["histogram"]
    threshold = hist["threshold"]
    assert hist["max"] == pytest.approx(2 * threshold) and hist["over"] >= 1, hist
    # the threshold in the middle of the axis, not squeezed into the first bins
    assert int(threshold / hist["bin_width"]) == len(hist["ok"]) // 2
    labels = json.loads(page.locator("[data-testid=histogram]").get_attribute("data-labels"))
    assert {b["text"].split()[0] for b in labels} >= {"threshold", "p50"}, labels
    for i, a in enumerate(labels):  # no two drawn labels share a pixel
        for b in labels[i + 1 :]:
            apart = a["y"] != b["y"] or a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
            assert apart, (a, b)
    text = page.locator("[data-testid=histogram]").get_attribute("aria-label")
    assert f"threshold {threshold:.4f}" in text and "p50" in text and "above" in text


# -- the part view ----------------------------------------------------------------------------


def part_image(page: Any) -> dict[str, Any]:
    return page.evaluate(
        """() => { const c = document.querySelector('[data-testid=part-image]');
        return {mode: c.dataset.mode, red: Number(c.dataset.redPixels), width: c.width,
                shown: c.getBoundingClientRect().width}; }"""
    )


def test_a_reject_opens_large_with_its_heatmap_regions_and_what_judged_it(
    shop: Shop, page: Any
) -> None:
    crack = shop.drop("crack")
    assert crack["verdict"] == "NG" and crack["regions"], crack
    card = page.locator(f"[data-testid=reject][data-seq='{crack['seq']}']")
    card.wait_for(timeout=5000)
    card.locator("[data-testid=open]").click()  # before: a card did nothing when clicked
    view = page.locator("[data-testid=part-view]")
    view.wait_for(timeout=8000)
    assert f"NG #{crack['seq']} {crack['part_id']}" in view.locator("h2").inner_text()
    facts = view.locator("[data-testid=part-facts]").inner_text()
    model = crack["model"]
    assert f"{crack['score']:.4f} against threshold {crack['threshold']:.4f}" in facts
    assert "button" in facts and f"{model['name']} {model['sha256'][:12]}" in facts
    rows = view.locator("[data-testid=part-regions] tr")
    assert rows.count() == len(crack["regions"]) + 1  # a header row and one per region
    r = crack["regions"][0]
    assert rows.nth(1).inner_text().split()[:5] == [
        str(x) for x in (1, r["x"], r["y"], r["w"], r["h"])
    ]

    image = part_image(page)  # the heatmap first, red where the map reached the threshold
    assert image["mode"] == "heatmap" and image["red"] > 0, image
    view.locator("[data-testid=part-mode-frame]").click()
    assert part_image(page)["mode"] == "frame"
    fitted = part_image(page)["shown"]
    view.locator("[data-testid=part-zoom-in]").click()
    view.locator("[data-testid=part-zoom-in]").click()
    assert part_image(page)["shown"] == pytest.approx(2 * fitted, rel=0.01)
    assert view.locator("[data-testid=part-zoom]").inner_text() == "200 %"
    v = shop.drop("good")  # the station view rebuilds under the open part view
    wait_until(lambda: shows_part(page, v), 8, "the station view rebuilt")
    assert view.is_visible() and part_image(page)["shown"] == pytest.approx(2 * fitted, rel=0.01)
    view.locator("[data-testid=part-close]").click()
    assert not view.is_visible()


def test_any_archived_part_is_found_by_part_id_or_seq_and_reviewed_there(
    shop: Shop, page: Any
) -> None:
    good = shop.drop("good")
    shop.drop("good")  # no longer the newest
    find = page.locator("[data-testid=find-input]")
    view = page.locator("[data-testid=part-view]")
    for text in (good["part_id"], str(good["seq"])):
        find.fill(text)
        page.locator("[data-testid=find]").click()
        view.wait_for(timeout=8000)
        assert f"OK #{good['seq']} {good['part_id']}" in view.locator("h2").inner_text()
        # the colour scale is the part's threshold: a good part has no red
        image = part_image(page)
        assert image["mode"] == "heatmap" and image["red"] == 0, image
        view.locator("[data-testid=part-close]").click()

    # a label on a part that is neither the newest nor a reject
    find.fill(good["part_id"])
    page.locator("[data-testid=find]").click()
    view.locator("[data-testid=part-review-missed_defect]").click()
    view.locator("[data-testid=part-confirm-yes]").click()
    reviewed = view.locator("[data-testid=part-reviewed]")
    reviewed.wait_for(timeout=5000)
    assert "missed defect by alice" in reviewed.inner_text()
    assert len(stored(shop, "missed_defect", good["seq"])) == 1
    view.locator("[data-testid=part-undo]").click()
    view.locator("[data-testid=part-review-missed_defect]").wait_for(timeout=5000)
    assert not stored(shop, "missed_defect", good["seq"])
    view.locator("[data-testid=part-close]").click()

    find.fill("no-such-part")
    page.locator("[data-testid=find]").click()
    result = page.locator("[data-testid=find-result]")
    wait_until(lambda: "is not in the archive" in result.inner_text(), 8, "the refusal")
    assert not view.is_visible()


def test_the_page_fits_a_390_px_phone_without_sideways_scrolling(shop: Shop, browser: Any) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    phone = context.new_page()
    phone.goto(f"{shop.url}/#/")
    tile(phone).wait_for(timeout=5000)
    assert sideways_overflow(phone) == 0  # before: the tiles were 340 px + margins wide
    station_view(phone, shop)
    phone.locator("[data-testid=reject]").first.wait_for(timeout=5000)
    assert sideways_overflow(phone) == 0
    context.close()


# -- reviews -----------------------------------------------------------------------------------


def test_a_review_asks_first_and_can_be_undone_or_changed_and_records_the_reviewer(
    shop: Shop, page: Any
) -> None:
    card = page.locator("[data-testid=reject]").first
    seq = int(card.get_attribute("data-seq"))
    card.locator("[data-testid=review-false_reject]").click()
    confirm = card.locator("[data-testid=confirm]")
    assert "as good (false reject)?" in confirm.inner_text()
    v = shop.drop("good")  # a new part rebuilds the view: the question stays open
    wait_until(lambda: shows_part(page, v), 8, "the view rebuilt with the new part")
    card = page.locator(f"[data-testid=reject][data-seq='{seq}']")
    assert card.locator("[data-testid=confirm]").count() == 1
    assert not stored(shop, "false_reject", seq)  # nothing before the confirmation

    card.locator("[data-testid=confirm-yes]").click()
    reviewed = card.locator("[data-testid=reviewed]")
    reviewed.wait_for(timeout=5000)
    assert "good (false reject) by alice" in reviewed.inner_text()
    [doc] = stored(shop, "false_reject", seq)
    assert json.loads(doc.read_text())["review"]["by"] == OPERATOR[0]
    today = page.locator("[data-testid=reviews-today]")
    wait_until(lambda: today.inner_text().startswith("1 false reject"), 5, "the count")

    reviewed.locator("[data-testid=undo]").click()  # a slip of the finger, taken back
    card.locator("[data-testid=review-true_defect]").wait_for(timeout=5000)
    assert not stored(shop, "false_reject", seq) and not doc.with_suffix(".png").exists()
    wait_until(lambda: today.inner_text().startswith("0 false rejects"), 5, "the count down")

    card.locator("[data-testid=review-true_defect]").click()
    card.locator("[data-testid=confirm-yes]").click()
    card.locator("[data-testid=reviewed]").wait_for(timeout=5000)
    assert "real defect by alice" in card.locator("[data-testid=reviewed]").inner_text()
    assert len(stored(shop, "true_defect", seq)) == 1 and not stored(shop, "false_reject", seq)

    # an accepted part: missed defect, as the live part; a newer part meanwhile leaves the
    # question about the part it was asked on (not the new live part)
    live = page.locator("[data-testid=live]")
    live.locator("[data-testid=review-missed_defect]").click()
    newer = shop.drop("good")
    wait_until(lambda: shows_part(page, newer), 8, "a newer live part")
    pending = live.locator("[data-testid=pending-review]")
    assert f"#{v['seq']} {v['part_id']} is no longer the live part" in pending.inner_text()
    assert f"Mark #{v['seq']} {v['part_id']} as missed defect?" in pending.inner_text()
    pending.locator("[data-testid=confirm-yes]").click()
    wait_until(lambda: stored(shop, "missed_defect", v["seq"]), 5, "the missed defect stored")
    assert not stored(shop, "missed_defect", newer["seq"])
    answer = page.locator("[data-testid=answer]")
    wait_until(lambda: f"seq {v['seq']}" in answer.inner_text(), 5, "the answer")
    assert pending.count() == 0


def test_product_change_offers_the_installed_products_and_asks_first(shop: Shop, page: Any) -> None:
    choice = page.locator("[data-testid=product-choice]")
    choice.wait_for(timeout=5000)  # before: a free-text field
    options = choice.locator("option").all_inner_texts()
    assert options == ["button (running)", "button-b"], options
    choice.select_option("button-b")
    page.locator("[data-testid=switch]").click()
    confirm = page.locator("[data-testid=confirm]")
    assert "Switch cam1 from button to button-b?" in confirm.inner_text()
    assert "product:" not in page.locator("[data-testid=answers]").inner_text()  # not sent yet
    confirm.locator("[data-testid=confirm-yes]").click()
    answer = page.locator("[data-testid=answer]")
    wait_until(lambda: "product: done" in answer.inner_text(), 8, "the switch's answer")
    assert "product button-b" in answer.inner_text()
    running = page.locator("[data-testid=product-choice] option", has_text="(running)")
    wait_until(lambda: running.inner_text() == "button-b (running)", 5, "button-b running")
    # and back, for the tests after this one
    page.locator("[data-testid=product-choice]").select_option("button")
    page.locator("[data-testid=switch]").click()
    page.locator("[data-testid=confirm-yes]").click()
    wait_until(lambda: "product: done — product button," in answer.inner_text(), 8, "back")


def test_reload_refuses_a_calibration_from_too_few_parts_and_the_page_says_why(
    shop: Shop, page: Any
) -> None:
    # `calibrate --force` from one part (now also --replace: test_calibrate_reviews.py): it
    # moved the threshold and the page's Reload applied it without a word.
    bundle = shop.products / "button"
    one = shop.tmp / "one-reviewed"
    one.mkdir()
    cv2.imwrite(str(one / "r1.png"), render_part(11, 900, None)[0])
    run = subprocess.run(
        [sys.executable, "-m", "inspectd", "calibrate", "--product", "button"]
        + ["--products", str(shop.products), "--images", str(one), "--force", "--replace"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert load_bundle(bundle).thresholds.n_good == 1  # the new active version's
    try:
        page.locator("[data-testid=reload]").click()
        answer = page.locator("[data-testid=answer]")
        wait_until(lambda: "reload_thresholds: refused" in answer.inner_text(), 8, "a refusal")
        assert (
            "calibrated from 1 good part, fewer than the 2995 a false-reject rate of 0.001 "
            "needs at 95% confidence" in answer.inner_text()
        )
        calibration = page.locator("[data-testid=calibration]").inner_text()
        assert "0.1523" in calibration and "50" in calibration  # still the bundle's own
    finally:  # back to the bundle as built (version 1), for the tests after this one
        shutil.rmtree(bundle / "versions")


# -- counts -------------------------------------------------------------------------------------


def test_counts_by_shift_across_its_start_by_product_across_a_switch_and_the_reject_alarm(
    shop: Shop, browser: Any
) -> None:
    # A page of its own whose second shift starts seconds from now (the clock the test sets is
    # the shift table), alarming at 2 rejects in a row.
    # 8 s: the UI's start and two parts fit before it on a loaded 2-core box
    begins = datetime.now(UTC) + timedelta(seconds=8)
    cfg = {
        **shop.ui_cfg,
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "timezone": "UTC",
        "shifts": [
            {"name": "early", "start": "00:00"},
            {"name": "late", "start": begins.strftime("%H:%M:%S")},
        ],
        "alarm_rejects_in_a_row": 2,
    }
    (shop.tmp / "ui-shifts.yaml").write_text(json.dumps(cfg))
    context = browser.new_context(
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]}
    )
    page = context.new_page()
    with ui_process(shop.tmp / "ui-shifts.yaml") as (_, url):
        page.goto(url + "/")
        t = tile(page)
        t.wait_for(timeout=5000)
        first = shop.drop("good")
        assert datetime.fromisoformat(first["t_verdict"]) < begins, "the box is too slow"
        shift = t.locator("[data-testid=shift]")
        wait_until(lambda: "OK 1 ·" in shift.inner_text(), 5, "the early shift's part")
        assert shift.inner_text().startswith("early shift since")
        per_min = t.locator("[data-testid=per-min]")
        assert per_min.inner_text() == "– parts/min"  # one part is no rate
        shop.drop("good")
        wait_until(lambda: per_min.inner_text() != "– parts/min", 5, "a rate from two parts")

        wait_until(lambda: datetime.now(UTC) > begins, 10, "the late shift's start")
        wait_until(lambda: shift.inner_text().startswith("late shift"), 5, "the late shift")
        assert "OK 0 · NG 0 · ERROR 0" in shift.inner_text()  # a new shift counts from zero
        for _ in range(2):
            shop.drop("crack")
        wait_until(lambda: "NG 2" in shift.inner_text(), 5, "the late shift's rejects")
        wait_until(lambda: "alarm" in (t.get_attribute("class") or ""), 5, "the alarm")
        assert "2 rejects in a row (alarm at 2)" in t.locator("[data-testid=problems]").inner_text()
        shop.drop("good")
        wait_until(lambda: "alarm" not in (t.get_attribute("class") or ""), 5, "alarm cleared")
        total = page.locator("[data-testid=line-total]").inner_text()  # the line: one station
        assert "late shift: OK 1 · NG 2 · ERROR 0 · yield 33.3 %" in total, total

        # a product switch: the product's counts start again
        page.goto(f"{url}/#/station/{urllib.parse.quote(BASE, safe='')}")
        page.locator("[data-testid=product-choice]").select_option("button-b")
        page.locator("[data-testid=switch]").click()
        page.locator("[data-testid=confirm-yes]").click()
        answer = page.locator("[data-testid=answer]")
        wait_until(lambda: "product: done" in answer.inner_text(), 8, "the switch")
        shop.drop("good")
        product = page.locator("[data-testid=product-detail]")
        wait_until(lambda: product.inner_text().startswith("button-b since"), 5, "button-b")
        assert "OK 1 · NG 0 · ERROR 0" in product.inner_text()
        panel = page.locator("[data-testid=counts-panel]").inner_text()
        assert "early shift before: OK 2" in panel and "button before it: OK 3 · NG 2" in panel
        rows = page.locator("[data-testid=reasons] tr")  # the late shift's two cracks
        cells = [rows.nth(i).locator("th, td").all_inner_texts() for i in range(rows.count())]
        assert all(reason.startswith("NG: ") for reason, _ in cells), cells
        assert sum(int(n) for _, n in cells) == 2, cells
        # where on the part: the frame's size from the overlays, each crack's region placed
        grid = page.locator("[data-testid=positions] td").all_inner_texts()
        assert sum(int(n) for n in grid if n) == 2, grid
        assert "last 60 minutes: 6 parts, 2 rejected" in page.locator(
            "[data-testid=trend]"
        ).get_attribute("aria-label")
        page.locator("[data-testid=product-choice]").select_option("button")
        page.locator("[data-testid=switch]").click()
        page.locator("[data-testid=confirm-yes]").click()
        wait_until(lambda: "product button," in answer.inner_text(), 8, "back to button")
    context.close()


# -- the wall display and accessibility ---------------------------------------------------------


def test_the_wall_display_fills_a_1920_px_screen_with_text_readable_from_three_metres(
    shop: Shop, browser: Any
) -> None:
    shop.drop("good")  # a last verdict to show, whichever tests ran before
    context = browser.new_context(
        viewport={"width": 1920, "height": 1080},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    wall = context.new_page()
    wall.goto(f"{shop.url}/#/wall")
    t = tile(wall)
    t.wait_for(timeout=5000)
    least, which = wall.evaluate(SMALLEST_TEXT_JS, t.element_handle())
    assert least >= 28, f"{which!r} is {least} px"  # before (no wall view): 13.5 px
    verdict = t.locator("[data-testid=last-verdict]")
    assert float(verdict.evaluate("(el) => parseFloat(getComputedStyle(el).fontSize)")) >= 90
    assert t.bounding_box()["width"] >= 600
    assert sideways_overflow(wall) == 0
    assert contrast_failures(wall, f'[data-testid=tile][data-base="{BASE}"]') == []
    context.close()


def test_headings_live_announcements_the_score_meter_and_a_visible_focus_ring(
    shop: Shop, page: Any
) -> None:
    page.goto(f"{shop.url}/#/")
    tile(page).wait_for()
    shown_h1 = "() => [...document.querySelectorAll('h1')].filter(e => !e.closest('[hidden]'))"
    assert page.evaluate(f"{shown_h1}.length") == 1  # before: no h1 on either view
    v = shop.drop("good")
    announce = page.locator("[data-testid=announce]")
    wait_until(
        lambda: announce.inner_text() == f"cam1: OK #{v['seq']} {v['part_id']}", 5, "announced"
    )
    assert announce.get_attribute("aria-live") == "polite"

    station_view(page, shop)
    wait_until(lambda: shows_part(page, v), 8, "the part")
    assert page.evaluate(f"{shown_h1}.map(e => e.textContent)") == ["cam1"]
    meter = page.locator("[data-testid=live] [role=meter]")
    assert float(meter.get_attribute("aria-valuenow")) == pytest.approx(v["score"])
    assert float(meter.get_attribute("aria-valuemax")) == pytest.approx(2 * v["threshold"])
    # keyboard focus shows: a 3 px ring (before: the browser's 1 px default)
    page.locator("[data-testid=reload]").focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    ring = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement); "
        "return [document.activeElement.dataset.testid, s.outlineStyle, s.outlineWidth]; }"
    )
    assert ring == ["reload", "solid", "3px"], ring


# -- a station that stopped answering ----------------------------------------------------------


def test_a_frozen_station_reads_not_responding_in_readable_colours(shop: Shop, page: Any) -> None:
    page.goto(f"{shop.url}/#/")
    t = tile(page)
    t.wait_for()
    shop.station.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: "no health for" in t.inner_text(), 10, "the quiet station flagged")
        # before: "ONLINE", white on amber at 2.4:1
        assert t.locator("[data-testid=state]").inner_text() == "NOT RESPONDING"
        assert contrast_failures(page, f'[data-testid=tile][data-base="{BASE}"]') == []
    finally:
        shop.station.signal(signal.SIGCONT)
    wait_until(lambda: "no health for" not in t.inner_text(), 10, "the station back")


def test_when_the_page_loses_its_own_server_it_does_not_blame_the_broker(
    shop: Shop, browser: Any
) -> None:
    cfg = {**shop.ui_cfg, "listen": {"host": "127.0.0.1", "port": free_port()}}
    (shop.tmp / "ui-second.yaml").write_text(json.dumps(cfg))
    context = browser.new_context(
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]}
    )
    second = context.new_page()
    pill = second.locator("[data-testid=broker]")
    with ui_process(shop.tmp / "ui-second.yaml") as (_, url):
        second.goto(url + "/")
        wait_until(lambda: pill.inner_text() == "broker connected", 5, "the broker pill")
    wait_until(lambda: pill.get_attribute("data-state") == "server-down", 10, "the server gone")
    # before: "broker: page lost its server, reconnecting"
    assert pill.inner_text().startswith("page server unreachable")
    assert "broker" not in pill.inner_text()
    context.close()


def test_a_stopped_station_s_tile_is_readable_and_its_actions_say_why_they_are_off(
    shop: Shop, page: Any
) -> None:
    shop.station.terminate()  # a clean stop: retained status "stopped"
    page.goto(f"{shop.url}/#/")
    t = tile(page)
    wait_until(lambda: t.get_attribute("data-state") == "stopped", 10, "the tile STOPPED")
    # before: the last part's text faded to opacity .45 (1.8-2.7:1)
    assert contrast_failures(page, f'[data-testid=tile][data-base="{BASE}"]') == []
    station_view(page, shop)
    reload = page.locator("[data-testid=reload]")
    wait_until(reload.is_disabled, 5, "Reload disabled")
    assert page.locator("[data-testid=review-true_defect]").first.is_disabled()
    assert (
        "cam1 is stopped: it cannot answer"
        in page.locator("[data-testid=actions-blocked]").inner_text()
    )
