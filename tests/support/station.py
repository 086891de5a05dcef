"""The test station (site plant, line l1, station cam1): its config file, its topics, the frames
it reads and the verdicts it writes.

``station_config(tmp, **overrides)`` is the station.yaml every daemon test starts from; each
test file passes what its station does differently (a looping or watched camera, another
products folder, no output files, metrics on, …).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspectd.synthetic import render_part

from support.mqtt_client import Received
from support.paths import PRODUCTS

BASE = "inspectd/v1/plant/l1/cam1"
TRIGGER = f"{BASE}/trigger"
ERROR = f"{BASE}/error"
VERDICT = f"{BASE}/verdict"
REJECT = f"{BASE}/reject"
STATUS = f"{BASE}/status"
HEALTH = f"{BASE}/health"

# mosquitto keeps sessions (and the messages queued for them) across its own restarts: it saves
# mosquitto.db in its work folder on SIGTERM and reads it at start. max_queued_messages 0: no
# limit on what it queues for a subscriber (the default 1000 could drop a backlog).
PERSISTENT = "persistence true\nmax_queued_messages 0"


# -- the config ---------------------------------------------------------------------------------


def station_dict(tmp: Path, *, port: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The station config as a dict: the shipped button product, state in tmp/state, a folder
    camera on tmp/frames (read once), MQTT to 127.0.0.1:``port`` (off without a port or an
    ``mqtt`` override), verdicts.jsonl in tmp/out without overlay files, JSON logs.

    ``overrides``, by section: a dict is merged into that section (a key at a time), None drops
    the section, anything else (a product name, a products folder) replaces it."""
    config: dict[str, Any] = {
        "station": {"site": "plant", "line": "l1", "name": "cam1"},
        "product": "button",
        "products_dir": str(PRODUCTS),
        "state_dir": str(tmp / "state"),
        "camera": {"source": "folder", "path": str(tmp / "frames")},
    }
    if port is not None:
        config["mqtt"] = {"host": "127.0.0.1", "port": port}
    elif "mqtt" not in overrides:
        config["mqtt"] = {"enabled": False}
    config["output"] = {"dir": str(tmp / "out"), "overlays": "none"}
    config["logging"] = {"level": "info", "format": "json"}
    for section, value in overrides.items():
        if value is None:
            config.pop(section, None)
        elif isinstance(value, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **value}
        else:
            config[section] = value
    return config


def station_config(
    tmp: Path, *, port: int | None = None, name: str = "station.yaml", **overrides: Any
) -> Path:
    """``station_dict(tmp, port=port, **overrides)`` written to tmp/``name`` (JSON is YAML;
    paths become strings)."""
    path = tmp / name
    path.write_text(json.dumps(station_dict(tmp, port=port, **overrides), default=str))
    return path


# -- frames -------------------------------------------------------------------------------------


def write_png(path: Path, image: np.ndarray) -> bytes:
    """``image`` as a PNG file; returns its bytes."""
    ok, data = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(data.tobytes())
    return data.tobytes()


def write_good_frames(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(folder / f"{i + 1:02d}_good.png", render_part(77, i, None)[0])
    return folder


def write_parts(folder: Path, kinds: list[str], pngs: dict[str, list[bytes]], prefix: str = "p"):
    """One file per kind (from the ``pngs`` fixture), named so that file-name order is the
    list's order; the part ids."""
    folder.mkdir(parents=True)
    parts = []
    for i, kind in enumerate(kinds):
        part = f"{prefix}{i:04d}_{kind}"
        choices = pngs[kind]
        (folder / f"{part}.png").write_bytes(choices[i % len(choices)])
        parts.append(part)
    return parts


# -- what it wrote and sent ---------------------------------------------------------------------


def jsonl(tmp: Path) -> list[dict[str, Any]]:
    """out/verdicts.jsonl: every verdict the daemon recorded (written after the outbox commit)."""
    path = tmp / "out" / "verdicts.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def first_arrivals(messages: list[Received]) -> list[dict[str, Any]]:
    """Verdict payloads without the QoS 1 duplicates; a duplicate must be the same payload."""
    seen: dict[int, bytes] = {}
    out = []
    for m in messages:
        seq = m.json()["seq"]
        if seq in seen:
            assert m.payload == seen[seq], f"seq {seq} came twice with different payloads"
            continue
        seen[seq] = m.payload
        out.append(m.json())
    return out
