"""The plc section: off by default, errors that name file, line, key and what is allowed, and
the security rule in the config (OPC UA off loopback needs certificate, key and users)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from inspectd.config import ConfigError, load_station_config

BASE = """\
station:
  name: press-3
product: button
camera:
  source: folder
  path: /data/in
  trigger: plc
"""


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "station.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_station_config(path)
    return [line.removeprefix(str(path)) for line in info.value.errors]


def test_both_servers_are_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "station.yaml"
    path.write_text(BASE.replace("  trigger: plc\n", ""))
    cfg = load_station_config(path)
    assert not cfg.plc.opcua.enabled and not cfg.plc.modbus.enabled and not cfg.plc.enabled
    assert cfg.plc.result_deadline_ms == 1000.0


def test_bad_plc_keys_name_file_line_key_and_the_allowed_values(tmp_path: Path) -> None:
    text = BASE + (
        "plc:\n"
        "  result_deadline_ms: 0\n"
        "  products: [button, ../etc]\n"
        "  modbus:\n"
        "    enabled: true\n"
        "    prot: 502\n"
    )
    assert errors(tmp_path, text) == [
        ":9:23 plc.result_deadline_ms: 0 is out of range: must be > 0",
        ":10:22 plc.products[1]: '../etc' does not match the pattern ^[A-Za-z0-9_-]+$",
        ":13:5 plc.modbus.prot: unknown key 'prot' (allowed: enabled, listen, port); "
        "did you mean 'port'?",
    ]


def test_opcua_off_loopback_needs_certificate_key_and_users(tmp_path: Path) -> None:
    text = BASE + "plc:\n  opcua:\n    enabled: true\n    listen: 0.0.0.0\n"
    assert errors(tmp_path, text) == [
        ":10:5 plc.opcua: listen 0.0.0.0 is not loopback: anonymous access is served on "
        "loopback only; give certificate, private_key, users_file (Basic256Sha256 Sign&Encrypt)"
    ]


def test_a_plc_trigger_needs_a_server_and_a_server_needs_triggers(tmp_path: Path) -> None:
    [line] = errors(tmp_path, BASE)
    assert "camera.trigger: plc needs plc.opcua.enabled or plc.modbus.enabled" in line
    text = BASE.replace("trigger: plc", "trigger: free_run") + "plc:\n  modbus: {enabled: true}\n"
    [line] = errors(tmp_path, text)
    assert "camera.trigger must be plc or mqtt" in line


def test_a_genicam_camera_triggered_by_the_plc_fires_by_software_trigger(tmp_path: Path) -> None:
    path = tmp_path / "station.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            station: {name: press-3}
            product: button
            camera: {source: genicam, trigger: plc}
            plc: {modbus: {enabled: true}}
            """
        )
    )
    assert load_station_config(path).camera.trigger_mode == "software"
    path.write_text(
        path.read_text().replace("trigger: plc", "trigger: plc, trigger_mode: hardware")
    )
    [line] = errors(tmp_path, path.read_text())
    assert "trigger: plc fires the camera by software trigger" in line
