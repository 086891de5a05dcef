"""Station config: schema, loader and the exact error lines it prints."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from inspectd.config import (
    ConfigError,
    FolderCamera,
    OpenCVCamera,
    StationConfig,
    format_resolved,
    load_station_config,
    load_yaml_model,
)

from support.paths import REPO

EXAMPLE = REPO / "systemd" / "station.example.yaml"

MINIMAL = """\
station:
  name: press-3
product: button
camera:
  source: folder
  path: /data/in
"""


def write(tmp_path: Path, text: str, name: str = "station.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path, model: type[BaseModel] = StationConfig) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_yaml_model(path, model)
    err = info.value
    assert str(err) == "\n".join(err.errors)
    assert err.path == path
    prefix = str(path)
    return [line.removeprefix(prefix) for line in err.errors]


def test_minimal_config_loads_with_defaults(tmp_path):
    cfg = load_station_config(write(tmp_path, MINIMAL))
    assert cfg.station.name == "press-3"
    assert isinstance(cfg.camera, FolderCamera)
    assert cfg.camera.path == Path("/data/in")
    assert cfg.mqtt.port == 1883
    assert cfg.mqtt.protocol == "5"
    assert cfg.mqtt.client_id == "inspectd-press-3"
    assert cfg.products_dir == Path("/etc/inspectd/products")
    assert cfg.output.dir is None


def test_unknown_key_top_level(tmp_path):
    path = write(tmp_path, MINIMAL + "prodcut: x\n")
    assert errors_of(path) == [
        ":7:1 prodcut: unknown key 'prodcut' (allowed: archive, camera, drift, engine, logging, "
        "metrics, mqtt, "
        "outbox, output, plc, product, products_dir, service, state_dir, station, versions); did "
        "you mean 'product'?"
    ]


def test_unknown_key_nested(tmp_path):
    path = write(tmp_path, MINIMAL + "mqtt:\n  host: broker\n  colour: red\n")
    assert errors_of(path) == [
        ":9:3 mqtt.colour: unknown key 'colour' (allowed: ack_timeout_s, base_topic, client_id, "
        "drain_timeout_s, enabled, health_interval_s, host, keepalive_s, overlay_max_bytes, "
        "overlays, password, "
        "password_file, port, protocol, stats_interval_s, tls, travel_window_s, "
        "trigger_max_bytes, username)"
    ]


def test_unknown_key_in_union_member_lists_that_members_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "  device: 0\n")
    assert errors_of(path) == [
        ":7:3 camera.device: unknown key 'device' (allowed: isolate, loop, path, pattern, "
        "rate_hz, source, trigger, watch)"
    ]


def test_wrong_type(tmp_path):
    path = write(tmp_path, MINIMAL + "mqtt:\n  port: abc\n  enabled: maybe\n  host: 5\n")
    assert errors_of(path) == [
        ":8:9 mqtt.port: 'abc' is not a valid integer",
        ":9:12 mqtt.enabled: 'maybe' is not a valid boolean (true or false)",
        ':10:9 mqtt.host: 5 is not a string (put it in quotes: "...")',
    ]


def test_out_of_range(tmp_path):
    path = write(tmp_path, MINIMAL + "  rate_hz: -1\nmqtt:\n  port: 70000\n")
    assert errors_of(path) == [
        ":7:12 camera.rate_hz: -1 is out of range: must be >= 0",
        ":9:9 mqtt.port: 70000 is out of range: must be <= 65535",
    ]


def test_bad_literal(tmp_path):
    path = write(tmp_path, MINIMAL + "logging:\n  level: verbose\n")
    assert errors_of(path) == [
        ":8:10 logging.level: 'verbose' is not one of debug, info, warning, error"
    ]


def test_bad_discriminator(tmp_path):
    path = write(
        tmp_path,
        """\
        station:
          name: press-3
        product: button
        camera:
          source: genicm
          path: /x
        """,
    )
    assert errors_of(path) == [
        ":5:11 camera.source: 'genicm' is not one of folder, opencv, genicam"
    ]


def test_missing_discriminator(tmp_path):
    path = write(tmp_path, "station:\n  name: a\nproduct: b\ncamera:\n  path: /x\n")
    assert errors_of(path) == [
        ":4:1 camera.source: missing key 'source' (one of folder, opencv, genicam)"
    ]


def test_missing_required_key(tmp_path):
    path = write(
        tmp_path,
        """\
        # a comment first
        station:
          site: s1
        camera:
          source: opencv
        """,
    )
    assert errors_of(path) == [
        ":2:1 station.name: required key 'name' is missing",
        ":2:1 product: required key 'product' is missing",
        ":4:1 camera.device: required key 'device' is missing",
    ]


def test_section_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "station:\nproduct: b\ncamera: 5\n")
    assert errors_of(path) == [
        ":1:9 station: null is not a mapping",
        ":3:9 camera: 5 is not a mapping",
    ]


def test_pattern_and_custom_validators(tmp_path):
    path = write(
        tmp_path,
        """\
        station:
          name: "press 3"
        product: button
        camera: {source: opencv, device: 0, width: 640}
        mqtt:
          base_topic: "plant/+/{station}"
        """,
    )
    assert errors_of(path) == [
        ":2:9 station.name: 'press 3' does not match the pattern ^[A-Za-z0-9_-]+$",
        ":4:9 camera: width and height go together: give both or neither",
        ":6:15 mqtt.base_topic: 'plant/+/{station}': the MQTT wildcards + and # are not "
        "allowed in a topic",
    ]


def test_model_level_rule(tmp_path):
    path = write(
        tmp_path, MINIMAL.split("camera:")[0] + "camera: {source: opencv, device: 0, width: 640}\n"
    )
    assert errors_of(path) == [":4:9 camera: width and height go together: give both or neither"]


def test_unknown_topic_placeholder(tmp_path):
    path = write(tmp_path, MINIMAL + "mqtt:\n  base_topic: a/{plant}/b\n")
    assert errors_of(path) == [
        ":8:15 mqtt.base_topic: 'a/{plant}/b': unknown placeholder {plant}; allowed: {site}, "
        "{line}, {station}"
    ]


def test_untagged_union_reports_one_line(tmp_path):
    base = MINIMAL.split("camera:")[0] + "camera:\n  source: opencv\n"
    assert errors_of(write(tmp_path, base + "  device: 1.5\n")) == [
        ":6:11 camera.device: 1.5 is not a valid integer or a string"
    ]
    assert errors_of(write(tmp_path, base + "  device: -1\n")) == [
        ":6:11 camera.device: -1 is out of range: must be >= 0"
    ]
    cfg = load_station_config(write(tmp_path, base + "  device: rtsp://cam/1\n"))
    assert isinstance(cfg.camera, OpenCVCamera)
    assert cfg.camera.device == "rtsp://cam/1"


def test_several_errors_at_once_sorted_by_line(tmp_path):
    path = write(
        tmp_path,
        """\
        station:
          name: a
          sitee: x
        product: b
        camera:
          source: genicm
        mqtt:
          port: 0
          keepalive_s: 1
        logging:
          format: xml
        """,
    )
    assert errors_of(path) == [
        ":3:3 station.sitee: unknown key 'sitee' (allowed: line, name, site); did you mean 'site'?",
        ":6:11 camera.source: 'genicm' is not one of folder, opencv, genicam",
        ":8:9 mqtt.port: 0 is out of range: must be >= 1",
        ":9:16 mqtt.keepalive_s: 1 is out of range: must be >= 5",
        ":11:11 logging.format: 'xml' is not one of auto, json, console",
    ]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_station_config(path)
    assert info.value.errors == [f"{path}: file not found"]


def test_file_name_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINIMAL + "mqtt: {port: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_station_config("station.yaml")
    assert str(info.value) == "station.yaml:7:14 mqtt.port: 0 is out of range: must be >= 1"
    with pytest.raises(ConfigError, match="^missing.yaml: file not found$"):
        load_station_config("missing.yaml")


def test_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_station_config(tmp_path)
    assert info.value.errors == [f"{tmp_path}: is a directory, not a file"]


def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "station:\n  name: a\n product: b\n")
    assert errors_of(path) == [
        ":3:2: YAML syntax error: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 1, column 1)"
    ]


def test_yaml_unclosed_quote(tmp_path):
    path = write(tmp_path, 'station:\n  name: "a\nproduct: b\n')
    (line,) = errors_of(path)
    assert line.startswith(":4:1: YAML syntax error: found unexpected end of stream")
    assert "at line 2, column 9" in line


def test_duplicate_key(tmp_path):
    path = write(tmp_path, MINIMAL + "mqtt:\n  port: 1884\n  port: 1885\n")
    assert errors_of(path) == [":9:3 mqtt.port: duplicate key 'port' (first given at line 8)"]


def test_duplicate_key_reported_with_validation_errors(tmp_path):
    path = write(tmp_path, "product: a\nproduct: b\nstation: {name: x}\ncamera: {source: usb}\n")
    assert errors_of(path) == [
        ":2:1 product: duplicate key 'product' (first given at line 1)",
        ":4:18 camera.source: 'usb' is not one of folder, opencv, genicam",
    ]


def test_merge_keys_may_override(tmp_path):
    path = write(
        tmp_path,
        """\
        station: &st
          name: a
          line: l2
        product: b
        camera: {source: folder, path: /x}
        output:
          <<: {dir: /out, jpeg_quality: 50}
          jpeg_quality: 60
        """,
    )
    cfg = load_station_config(path)
    assert cfg.output.dir == Path("/out")
    assert cfg.output.jpeg_quality == 60


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "~\n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "station.yaml"
    path.write_text(text)
    assert errors_of(path) == [":1:1: the file is empty; expected a mapping of 'key: value' lines"]


def test_top_level_not_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    assert errors_of(path) == [
        ":1:1: the top level must be a mapping of 'key: value' lines, not a list"
    ]
    path = write(tmp_path, "just text\n")
    assert errors_of(path) == [
        ":1:1: the top level must be a mapping of 'key: value' lines, not a string ('just text')"
    ]


def test_relative_paths_resolved_against_config_dir(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    write(
        conf_dir,
        """\
        station: {name: a}
        product: b
        products_dir: products
        state_dir: ../state
        camera: {source: folder, path: incoming}
        output: {dir: out}
        """,
    )
    cfg = load_station_config(Path("conf/station.yaml"))
    assert cfg.products_dir == tmp_path / "conf" / "products"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.camera.path == tmp_path / "conf" / "incoming"
    assert cfg.output.dir == tmp_path / "conf" / "out"
    resolved = format_resolved(cfg)
    assert f"products_dir: {tmp_path / 'conf' / 'products'}\n" in resolved


def test_empty_and_home_paths_rejected(tmp_path):
    path = write(tmp_path, MINIMAL + 'state_dir: ""\noutput: {dir: ~/out}\n')
    assert errors_of(path) == [
        ":7:12 state_dir: '': a path must not be empty",
        ":8:15 output.dir: '~/out': '~' is not expanded here; write the full path",
    ]


@pytest.mark.parametrize(
    ("written", "expected"), [("5", "5"), ("5.0", "5"), ('"3.1.1"', "3.1.1"), ("3.1.1", "3.1.1")]
)
def test_protocol_number_accepted_as_text(tmp_path, written, expected):
    cfg = load_station_config(write(tmp_path, MINIMAL + f"mqtt:\n  protocol: {written}\n"))
    assert cfg.mqtt.protocol == expected


def test_protocol_bad_number_shows_what_was_written(tmp_path):
    path = write(tmp_path, MINIMAL + "mqtt:\n  protocol: 4\n")
    assert errors_of(path) == [":8:13 mqtt.protocol: 4 is not one of 5, 3.1.1"]


def test_topic_base_and_client_id(tmp_path):
    text = """\
    station: {site: plant7, line: l2, name: press-3}
    product: button
    camera: {source: opencv, device: /dev/video0}
    mqtt: {client_id: my-client}
    """
    cfg = load_station_config(write(tmp_path, text))
    assert cfg.topic_base() == "inspectd/v1/plant7/l2/press-3"
    assert cfg.mqtt.client_id == "my-client"
    cfg = load_station_config(
        write(tmp_path, MINIMAL + "mqtt:\n  base_topic: factory/{line}/{station}/x\n")
    )
    assert cfg.topic_base() == "factory/line1/press-3/x"


def test_example_file_loads(tmp_path):
    cfg = load_station_config(EXAMPLE)
    assert isinstance(cfg.camera, FolderCamera)
    assert cfg.camera.path == Path("/var/lib/inspectd/incoming")
    assert cfg.mqtt.protocol == "5"
    assert cfg.topic_base() == "inspectd/v1/site/line1/station1"
    # the resolved form is itself a valid config that loads to the same thing
    reloaded = load_station_config(write(tmp_path, format_resolved(cfg)))
    assert reloaded == cfg


def test_example_file_shows_every_key():
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text())
    assert list(data) == list(StationConfig.model_fields)
    for section, value in data.items():
        if isinstance(value, dict):
            model = type(getattr(load_station_config(EXAMPLE), section))
            assert list(value) == list(model.model_fields), section


def test_format_resolved_keeps_schema_order(tmp_path):
    cfg = load_station_config(write(tmp_path, MINIMAL))
    top = [
        line.split(":")[0] for line in format_resolved(cfg).splitlines() if not line[0].isspace()
    ]
    assert top == list(StationConfig.model_fields)


def test_loaded_config_is_frozen(tmp_path):
    cfg = load_station_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError):
        cfg.product = "other"  # type: ignore[misc]


def test_loader_is_generic(tmp_path):
    class Thresholds(BaseModel):
        model_config = {"extra": "forbid"}
        ng_score: float
        classes: list[str] = []

    assert load_yaml_model(write(tmp_path, "ng_score: 0.5\n", "t.yaml"), Thresholds).ng_score == 0.5
    path = write(tmp_path, "ng_score: high\nclasses:\n  - ok\n  - 3\n", "t.yaml")
    assert errors_of(path, Thresholds) == [
        ":1:11 ng_score: 'high' is not a valid number",
        ':4:5 classes[1]: 3 is not a string (put it in quotes: "...")',
    ]
