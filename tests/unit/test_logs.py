"""Log output: JSON lines when not on a terminal (systemd/journald), readable text on one."""

from __future__ import annotations

import io
import json
import re

import pytest
import structlog

from inspectd.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog():
    yield
    structlog.reset_defaults()  # later tests must not log into these streams


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_writes_json_lines_off_a_terminal_and_filters_by_level():
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)
    log = structlog.get_logger("t")
    log.debug("hidden")
    log.warning("part.error", part_id="p1", seq=7)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["event"] == "part.error" and entry["level"] == "warning"
    assert entry["seq"] == 7 and entry["timestamp"].endswith("Z")


def test_auto_writes_readable_text_on_a_terminal():
    out = Terminal()
    configure_logging("info", "auto", stream=out)
    structlog.get_logger("t").info("station.started", station="cam1")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colours on a terminal
    assert "station.started" in text and "station=cam1" in text
    assert not text.lstrip().startswith("{")
