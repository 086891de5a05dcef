"""`inspectd demo` with its line page: the demo as a user runs it (real daemon, real broker),
the page it prints opened in Debian's chromium (Playwright, as in test_ui.py), how long the
page stays up (--hold, Ctrl-C on a terminal), and the demo without the page."""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from inspectd.mqtt.broker import LocalBroker, amqtt_available, free_port

from support import waiting
from support.browser import CHROMIUM
from support.paths import LEAN_RUN, REPO

BASE = "inspectd/v1/demo/line1/demo1"
LIMIT = 30  # 6 s of parts at the demo's rate: rejects of every kind (the corrupt file is part 25)
PAGE = re.compile(r"^Page: (http://127\.0\.0\.1:(\d+)/)  \(the line page")
SUMMARY = re.compile(r"^Summary: (\d+) parts  OK (\d+)  NG (\d+)  ERROR (\d+)$")


# The page is asked every 20 ms, as in test_ui.py.
wait_until = functools.partial(waiting.wait_until, every=0.02)


class Demo:
    """`inspectd demo` as a child process (torch must stay out of it), its lines as they come."""

    def __init__(self, args: list[str], stdin: int | IO[Any], prelude: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + LEAN_RUN, "demo", *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self.at = 0.0  # when the line expect() last matched came (monotonic)
        self._new: queue.Queue[tuple[float, str] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._new.put((time.monotonic(), line.rstrip("\n")))
        self._new.put(None)

    def expect(self, pattern: re.Pattern[str] | str, timeout: float) -> re.Match[str]:
        """The first line not read before that matches pattern."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._new.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                raise AssertionError(
                    f"the demo ended (rc {self.proc.wait()}) before {rx.pattern!r}:\n"
                    + "\n".join(self.lines[-30:])
                )
            self.at, line = item
            self.lines.append(line)
            if m := rx.search(line):
                return m
        raise AssertionError(
            f"not within {timeout} s: {rx.pattern!r}\n" + "\n".join(self.lines[-30:])
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def demo_args(tmp: Path, mqtt_port: int, *extra: str) -> list[str]:
    return [
        "--out",
        str(tmp / "demo-out"),
        "--limit",
        str(LIMIT),
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        str(mqtt_port),
        *extra,
    ]


def counts(summary: re.Match[str]) -> dict[str, str]:
    return {"OK": summary.group(2), "NG": summary.group(3), "ERROR": summary.group(4)}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_printed_page_shows_the_demo_station_with_its_verdicts(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    hold = 10.0
    default_port_free = port_free(8470)
    demo = Demo(demo_args(tmp_path, mosquitto.port, "--hold", f"{hold:g}"), subprocess.DEVNULL)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            page_line = demo.expect(PAGE, timeout=60)
            url = page_line.group(1)
            if default_port_free:
                assert page_line.group(2) == "8470"
            assert not any(re.match(r"\s+#\d+ ", line) for line in demo.lines), (
                "address after the parts"
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)  # while the parts go through, as someone watching the demo would
            tile = page.locator(f'[data-testid=tile][data-base="{BASE}"]')
            tile.wait_for(timeout=10_000)
            assert "button" in tile.inner_text()

            summary = demo.expect(SUMMARY, timeout=60)
            assert summary.group(1) == str(LIMIT)
            for verdict, n in counts(summary).items():  # every verdict of the run, none twice
                wait_until(
                    lambda v=verdict, n=n: (
                        tile.locator(f"[data-testid=count-{v}]").inner_text() == n
                    ),
                    5,
                    f"{verdict} {n} on the tile",
                )
            assert int(summary.group(4)) >= 1  # the corrupt part: the ERROR path is on the page too
            stays = demo.expect(r"^Page: http://\S+ stays up for 10 s", timeout=10)
            held_from = demo.at
            assert stays.string.split()[1] == url

            tile.click()  # the station view: the overlays the demo station sent, its rejects
            page.locator("[data-testid=station-view]").wait_for(timeout=5000)
            overlay = page.locator("[data-testid=live-overlay]")
            overlay.wait_for(timeout=5000)
            wait_until(
                lambda: page.evaluate(
                    "(img) => img.complete && img.naturalWidth > 0", overlay.element_handle()
                ),
                5,
                "the overlay decoded",
            )
            assert page.locator("[data-testid=reject]").count() >= 1
            # the station is still up during --hold: a reject opens from its archive and takes
            # a review (before: the demo kept no archive and stopped its station first)
            card = page.locator("[data-testid=reject]").first
            seq = card.get_attribute("data-seq")
            card.locator("[data-testid=open]").click()
            view = page.locator("[data-testid=part-view]")
            view.wait_for(timeout=10_000)
            assert f"#{seq} " in view.locator("h2").inner_text()
            view.locator("[data-testid=part-review-true_defect]").click()
            view.locator("[data-testid=part-confirm-yes]").click()
            view.locator("[data-testid=part-reviewed]").wait_for(timeout=10_000)
            reviews = tmp_path / "demo-out" / "archive" / "reviews" / "true_defect"
            assert list(reviews.glob(f"*/{int(seq):010d}-*.json"))
            browser.close()

        assert demo.proc.wait(hold + 10) == 0, "\n".join(demo.lines[-30:])
        held = time.monotonic() - held_from
        assert held > hold - 2.0, f"the page went away after {held:.1f} s, not {hold:g}"
        assert port_free(int(page_line.group(2))), "the page still serves after the demo ended"
    finally:
        demo.close()


@pytest.mark.skipif(not amqtt_available(), reason="amqtt is not installed (extra 'demo')")
def test_on_a_terminal_the_page_stays_until_ctrl_c_also_over_amqtt(tmp_path: Path) -> None:
    """No mosquitto: the embedded amqtt speaks MQTT 3.1.1 only, and the page's client with it."""
    no_mosquitto = "import inspectd.mqtt.broker as b; b.find_mosquitto = lambda: None; "
    controller, terminal = os.openpty()  # stdin is a terminal, as when a person runs it
    try:
        demo = Demo(demo_args(tmp_path, free_port()), terminal, prelude=no_mosquitto)
        try:
            demo.expect(r"started an embedded one at .*\(MQTT 3\.1\.1\)", timeout=60)
            url = demo.expect(PAGE, timeout=30).group(1)
            summary = demo.expect(SUMMARY, timeout=60)
            demo.expect(r"^Page: http://\S+ stays up; Ctrl-C to end$", timeout=10)

            def station() -> dict[str, Any] | None:
                with urllib.request.urlopen(url + "api/line", timeout=2) as r:
                    line = json.load(r)
                return next((s for s in line["stations"] if s["base"] == BASE), None)

            st = wait_until(station, 5, "the demo station on the page")
            wait_until(
                lambda: (
                    {k: str(v) for k, v in station()["counts"].items() if k in counts(summary)}
                    == counts(summary)
                ),
                5,
                "the run's verdicts on the page, over MQTT 3.1.1",
            )
            assert st["product"] == "button"
            time.sleep(1.0)
            assert demo.proc.poll() is None, "the demo did not wait for Ctrl-C on a terminal"
            demo.proc.send_signal(signal.SIGINT)
            assert demo.proc.wait(10) == 0, "\n".join(demo.lines[-30:])
        finally:
            demo.close()
    finally:
        os.close(controller)
        os.close(terminal)


def test_the_demo_runs_on_without_the_page_and_with_no_ui(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    # starlette missing (a venv made with `.[demo]` only): one line, and the demo as before
    without_starlette = "import sys; sys.modules['starlette'] = None; "
    demo = Demo(demo_args(tmp_path, mosquitto.port), subprocess.DEVNULL, prelude=without_starlette)
    try:
        demo.expect(
            r"^Page: not started \(starlette is not installed: pip install -e '\.\[ui\]'\)$", 60
        )
        demo.expect(SUMMARY, timeout=60)
        assert demo.proc.wait(10) == 0
    finally:
        demo.close()
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            LEAN_RUN,
            "demo",
            *demo_args(tmp_path, mosquitto.port, "--no-ui", "--hold", "60"),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Summary:" in run.stdout and "Page:" not in run.stdout
    assert time.monotonic() - started < 50  # no page, so nothing to hold
