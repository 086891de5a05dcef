"""The config files' JSON schemas, byte for byte against tests/golden/: a refactor of the config
models (a shared base, a moved field) must not change what users' files may say or how the
schema reads. A deliberate change regenerates them: INSPECTD_UPDATE_GOLDEN=1 pytest this file,
and the diff goes into the same commit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from inspectd.config import StationConfig
from inspectd.ui.config import UiConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.mark.parametrize(
    "model, name", [(StationConfig, "station_config"), (UiConfig, "ui_config")]
)
def test_the_config_schema_is_unchanged(model: type[BaseModel], name: str) -> None:
    text = json.dumps(model.model_json_schema(), indent=1, ensure_ascii=False) + "\n"
    path = GOLDEN / f"{name}.schema.json"
    if os.environ.get("INSPECTD_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), (
        f"{model.__name__}'s JSON schema changed; if meant, regenerate {path.name} "
        "(INSPECTD_UPDATE_GOLDEN=1) and say why in the commit"
    )
