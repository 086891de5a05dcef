"""The line page in tests: `inspectd ui` as its own process, and what the page is checked with
in chromium (readable contrast, keyboard focus, the width it takes)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inspectd.mqtt.broker import find_mosquitto, free_port
from inspectd.ui.auth import hash_password

from support import waiting
from support.browser import CHROMIUM
from support.mqtt_client import Subscriber
from support.paths import REPO, needs_bundle

# The page is asked every 20 ms: some checks time how soon it shows a verdict.
wait_until = functools.partial(waiting.wait_until, every=0.02)


@contextlib.contextmanager
def ui_process(
    config: Path, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`inspectd ui --config config` as its own process, serving and connected to the broker;
    stopped with SIGTERM, which it must obey within 10 s. Its log: config with suffix .log.
    ``tls``: it serves HTTPS, checked with this client context."""
    port = json.loads(config.read_text())["listen"]["port"]
    logfile = config.with_suffix(".log")
    with open(logfile, "wb") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "inspectd", "ui", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

            def ready() -> bool:
                assert ui.poll() is None, logfile.read_text()
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=1, context=tls) as r:
                        return json.load(r)["broker"]["connected"]
                except OSError:
                    return False

            wait_until(ready, 20, "the UI serving and connected to the broker")
            yield ui, url
        finally:
            ui.send_signal(signal.SIGTERM)
            try:
                ui.wait(10)
            except subprocess.TimeoutExpired:
                ui.kill()
                raise AssertionError("the UI did not stop on SIGTERM within 10 s") from None


def contrast_failures(page: Any, selector: str) -> list[str]:
    """The texts under ``selector`` whose contrast is below WCAG AA (contrast.js says how)."""
    text = (Path(__file__).parent / "contrast.js").read_text()
    # the function alone: Playwright calls a string only when it starts as a function does
    script = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    return page.evaluate(script, page.locator(selector).element_handle())


def sideways_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than the window (0: no sideways scrolling)."""
    return page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


def drop_part(frames: Path, verdicts: Subscriber, part: str, image: np.ndarray) -> dict[str, Any]:
    """``image`` into the station's watched folder as ``part``.png, and its verdict once the
    station sent it on …/verdict (``verdicts`` subscribes there)."""
    ok, data = cv2.imencode(".png", image)
    assert ok
    tmp = frames / f"{part}.tmp"  # not matched by the camera's pattern: rename is atomic
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, frames / f"{part}.png")
    before = len(verdicts.messages())
    v = verdicts.wait_for(before + 1, timeout=20)[before].json()
    assert v["part_id"] == part, v
    return v


OPERATOR = ("alice", "correct horse battery")

# what a page test needs: a broker, Debian's chromium and the bundle (make test installs them)
PAGE_TEST_MARKS = [
    pytest.mark.skipif(
        find_mosquitto() is None, reason="mosquitto is not installed (make test installs it)"
    ),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (make test installs it)"
    ),
    needs_bundle,
]


def operator_page_config(broker_port: int) -> dict[str, Any]:
    """The page's config: on a free loopback port, the stations of inspectd/v1/plant/l1 on the
    broker at ``broker_port``, one operator (``OPERATOR``)."""
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "stations": ["inspectd/v1/plant/l1/+"],
        "access": {
            "users": [
                {
                    "name": OPERATOR[0],
                    "role": "operator",
                    "password_hash": hash_password(OPERATOR[1]),
                }
            ]
        },
    }


# (root) -> [smallest font size in px of any shown text under root, that text]
SMALLEST_TEXT_JS = """(root) => {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  let least = Infinity, which = "";
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.textContent.trim() || !n.parentElement.getClientRects().length) continue;
    const px = parseFloat(getComputedStyle(n.parentElement).fontSize);
    if (px < least) { least = px; which = n.textContent.trim().slice(0, 30); }
  }
  return [least, which];
}"""
