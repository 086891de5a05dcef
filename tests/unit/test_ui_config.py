"""The page's config: shift starts and their time zone, with errors that say file, line, key
and what is allowed."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from inspectd.config.loader import ConfigError
from inspectd.ui.config import load_ui_config


def test_shifts_are_taken_in_start_order_in_their_time_zone(tmp_path: Path) -> None:
    path = tmp_path / "ui.yaml"
    path.write_text(
        "timezone: Europe/Berlin\nalarm_rejects_in_a_row: 3\nshifts:\n"
        "  - {name: late, start: '14:00'}\n  - {name: early, start: '06:00'}\n"
    )
    counting = load_ui_config(path).counting()
    assert counting.starts == [("early", time(6)), ("late", time(14))]
    assert str(counting.tz) == "Europe/Berlin" and counting.alarm_in_a_row == 3
    assert load_ui_config(None).counting().starts is None  # no shifts: no shift counts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "shifts:\n  - {name: a, start: '25:00'}\n",
            ":2:22 shifts[0].start: '25:00': not a time of day: HH:MM from 00:00 to 23:59",
        ),
        (
            "timezone: Mars/Olympus\n",
            ":1:11 timezone: 'Mars/Olympus': not a time zone: an IANA name such as Europe/Berlin",
        ),
        (
            "shifts:\n  - {name: a, start: '06:00'}\n  - {name: b, start: '06:00'}\n",
            ":2:3 shifts: two shifts start at the same time",
        ),
        (
            "alarm_rejects_in_a_row: -1\n",
            ":1:25 alarm_rejects_in_a_row: -1 is out of range: must be >= 0",
        ),
    ],
)
def test_bad_shift_settings_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ui.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_ui_config(path)
    assert f"{path}{message}" in str(err.value), str(err.value)
