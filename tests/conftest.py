"""Shared fixtures, and the marker of each test's folder.

tests/ is not a package: pytest puts this folder on sys.path (rootdir conftest, default
"prepend" import mode), so the helpers in tests/support import as ``support.<module>`` from
every folder. The folders say what a test exercises:

    unit/       in-process units: no broker, no child processes; runs in seconds
    component/  one real part: mosquitto, the SQLite outbox, camera child processes, the GenTL
                simulator, ONNX Runtime and torch models
    daemon/     `inspectd run` (or the UI server) as its own process, as systemd starts it
    system/     the installer, the systemd unit, the demo, the PLC gateway, the soak script

Each test gets its folder's marker (``pytest -m unit`` selects what ``pytest tests/unit``
runs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspectd.mqtt.broker import LocalBroker, find_mosquitto

from support.browser import CHROMIUM

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = ("unit", "component", "daemon", "system")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets the marker of the folder under tests/ it lives in."""
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:  # not under tests/
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))


# In CI (.ci/run sets INSPECTD_CI=1) a test skipped because a tool the suite relies on is
# missing fails instead: `make test` installs them, so a skip there means a part went untested.
# Locally such a skip, which says how to install the tool, is fine.
REQUIRED_TOOLS = ("mosquitto", "chromium", "playwright", "nginx", "openssl", "simulator")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("INSPECTD_CI")):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report)
    if any(tool in reason.lower() for tool in REQUIRED_TOOLS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every tool must be present: {reason}"


@pytest.fixture
def mosquitto() -> Iterator[LocalBroker]:
    """A private mosquitto on a free 127.0.0.1 port (never the system one on 1883)."""
    if find_mosquitto() is None:
        pytest.skip(
            "mosquitto is not installed (apt-get install mosquitto; `make test` installs it)"
        )
    with LocalBroker.start_mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def pngs() -> dict[str, list[bytes]]:
    """Rendered button parts as PNG bytes, rendered once: tests write copies under new names
    (support.station.write_parts). "good" renders score far below the shipped threshold,
    "crack" ones far above it (checked against the verdicts where a test depends on it);
    "empty" is a zero-byte file and "corrupt" a PNG cut in half (both ERROR)."""
    import cv2

    from inspectd.synthetic import render_part

    def png(image: Any) -> bytes:
        ok, data = cv2.imencode(".png", image)
        assert ok
        return data.tobytes()

    good = [png(render_part(11, i, None)[0]) for i in (2, 3, 4, 8)]
    return {
        "good": good,
        "crack": [png(render_part(11, i, "crack")[0]) for i in (107, 110)],
        "empty": [b""],
        "corrupt": [good[0][: len(good[0]) // 2]],
    }


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A test that configures logging binds it to that test's captured stream, which pytest
    closes afterwards; later tests in the same process must not log into it."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (support.browser), one per test module: the page
    tests skip themselves where it is missing."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()
