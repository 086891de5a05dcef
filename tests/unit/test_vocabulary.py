"""The contract's vocabulary (inspectd.contract.vocabulary) against docs/mqtt.md and against what
the station registers: a state, command or error code added on one side only fails here."""

from __future__ import annotations

import re
from pathlib import Path

from inspectd.contract.vocabulary import Command, ErrorCode, HealthState, StationState
from inspectd.reviews import ReviewDesk
from inspectd.service.control import ProductControl
from inspectd.service.teaching import TeachDesk

from support.contract import TABLE
from support.paths import REPO

MQTT_MD = (REPO / "docs" / "mqtt.md").read_text(encoding="utf-8")


def documented(topic: str, key: str) -> set[str]:
    keys = TABLE[topic].keys
    assert keys is not None
    values = keys[key].values
    assert values is not None, (topic, key)
    return set(values)


def test_states_are_the_documented_ones() -> None:
    assert set(StationState) == documented("status", "state")
    assert set(HealthState) == documented("health", "state")


def test_the_commands_are_documented_and_are_the_ones_the_station_serves(tmp_path: Path) -> None:
    row = TABLE["cmd/<name>/set"].payload
    named = set(re.findall(r"`(\w+)` \(`\{", row))  # `name` ({payload})
    served = set(ProductControl(tmp_path, lambda bundle: None).commands())  # type: ignore[arg-type,return-value]
    served |= set(ReviewDesk(None).handlers())
    served |= set(TeachDesk(None, None, None, None).handlers())  # type: ignore[arg-type]
    assert set(Command) == named == served


def test_every_error_code_is_documented_and_every_documented_one_exists() -> None:
    for code in ErrorCode:
        assert f"`{code}`" in MQTT_MD, code
    # the command refusals' list ("anything else is refused on …/error (`a`, `b`, ...)")
    listed = re.search(r"refused on\s+`…/error` \(((?:`\w+`,?\s*)+)\)", MQTT_MD)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed.group(1))) <= set(ErrorCode)
