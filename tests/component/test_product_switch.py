"""A product switch and a threshold reload change the model and its thresholds together.

The switch waits for the next part (the inference thread applies it between two parts); a
reload (SIGHUP or the reload_thresholds command) that read the running bundle while a switch
was waiting wrote the old product's thresholds after the switch: parts of the new product were
judged with another product's threshold (seen on the daemon: 1 in 8 SIGHUPs, 2 in 8 commands).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from inspectd.bundle import MANIFEST, THRESHOLDS, Bundle, Thresholds, load_bundle
from inspectd.bundle_seal import replace_thresholds, seal
from inspectd.config import StationConfig
from inspectd.service import control as control_module
from inspectd.service.station import Station

from support.paths import BUNDLE
from support.station import station_dict, write_good_frames

OTHER_IMAGE = 0.123456  # the other product's image threshold, unlike the button's


def copy_bundle(products: Path, name: str, image: float | None = None) -> None:
    import shutil

    target = products / name
    shutil.copytree(BUNDLE, target)
    manifest = yaml.safe_load((target / MANIFEST).read_text())
    manifest["name"] = name
    seal(target, manifest, list(manifest["files"]))
    if image is not None:
        data = yaml.safe_load((target / THRESHOLDS).read_text())
        replace_thresholds(target, Thresholds.model_validate({**data, "image": image}))


def test_a_reload_while_a_switch_waits_reloads_the_new_product(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    products = tmp_path / "products"
    copy_bundle(products, "button")
    copy_bundle(products, "other", OTHER_IMAGE)
    config = StationConfig.model_validate(station_dict(tmp_path, products_dir=products))
    write_good_frames(tmp_path / "frames", 2)  # read once the station runs, after the reload
    station = Station(config)
    station.start()
    try:
        pipeline = station.pipeline
        assert pipeline is not None
        # the command handler the MQTT desk calls; no part inspected yet: the switch waits
        station.control.switch("other")
        assert pipeline.bundle.name == "button"

        # The inference thread takes the switch while the reload reads a bundle from disk:
        # the interleaving that lost the race, made certain here.
        def load_then_switch(path: Path) -> Bundle:
            bundle = load_bundle(path)
            pipeline._apply_swap()
            return bundle

        monkeypatch.setattr(control_module, "load_bundle", load_then_switch)
        answer = station.control.reload_thresholds()
        assert answer["product"] == "other" and answer["image"] == OTHER_IMAGE
        assert (pipeline.bundle.name, pipeline.thresholds.image) == ("other", OTHER_IMAGE)

        station.run(limit=2)
    finally:
        station.stop()
    verdicts = [json.loads(line) for line in (tmp_path / "out" / "verdicts.jsonl").open()]
    assert [(v["product"], v["threshold"]) for v in verdicts] == [("other", OTHER_IMAGE)] * 2
