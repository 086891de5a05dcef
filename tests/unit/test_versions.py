"""Versions of a product's bundle on disk (issue 34): a folder of today's layout is version 1,
new versions are sealed beside it, a pointer says which one loads, rollback and pruning.
Real files in tmp_path, the CLI called in-process; the crash tests with a killed writer are in
tests/component/test_version_crash.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from inspectd.bundle import MANIFEST, BundleError, load_bundle, sha256_of
from inspectd.bundle_seal import write_thresholds
from inspectd.cli import main
from inspectd.config import ConfigError, load_station_config
from inspectd.versions import layout
from inspectd.versions.listing import history, rollback_target
from inspectd.versions.store import (
    Provenance,
    VersionStoreError,
    activate,
    parent_manifest,
    prune,
    write_version,
)

from support.paths import BUNDLE, needs_bundle
from support.products import copy_bundle
from support.versions import model_version, threshold_version

pytestmark = needs_bundle


@pytest.fixture
def product(tmp_path: Path) -> Path:
    return copy_bundle(tmp_path / "products", "button")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_product_folder_of_today_s_layout_is_version_1_and_active(product: Path) -> None:
    bundle = load_bundle(product)
    assert (bundle.version, bundle.path, bundle.product_dir) == (1, product, product)
    assert not (product / "versions").exists()  # loading writes nothing
    (row,) = history(product)
    assert (row.id, row.active, row.origin, row.parent) == (1, True, "build", None)
    assert row.model_sha256 == load_bundle(BUNDLE).model_sha256
    assert layout.product_names(product.parent) == ["button"]


def test_a_new_version_is_sealed_beside_the_active_one_which_stays_as_it_was(
    product: Path,
) -> None:
    before = files_of(product)
    v2 = threshold_version(product, 0.5, by="alice")

    assert (v2.version, v2.path, v2.product_dir) == (2, product / "versions" / "2", product)
    assert load_bundle(product) == v2  # the active one now
    assert files_of(product) == before  # version 1 untouched, still loadable as it was
    assert load_bundle(product, 1).thresholds.image != 0.5 == v2.thresholds.image
    # the model is the parent's, hard-linked: no second copy on the box
    assert os.stat(v2.model_path).st_ino == os.stat(product / "model.onnx").st_ino
    record = v2.manifest.version
    assert record is not None
    assert (record.id, record.parent, record.origin, record.by) == (2, 1, "calibrate", "alice")
    assert record.parts == 1 and record.figures["image_threshold"] == 0.5
    assert (v2.path / record.parts_file).read_text() == f"{'ab' * 32}  good  part-1\n"
    assert "parts.sha256" in v2.manifest.files  # sealed like every other file
    pointer = yaml.safe_load((product / "versions" / "active.yaml").read_text())
    assert pointer["version"] == 2 and pointer["previous"] == 1 and pointer["why"] == "calibrate"


def test_rollback_restores_the_previous_model_and_versions_lists_all(product: Path, capsys) -> None:
    v1 = load_bundle(product)
    threshold_version(product, 0.4)
    v3 = model_version(product, 0.3)
    assert v3.model_sha256 != v1.model_sha256
    assert rollback_target(product) == 2

    products = str(product.parent)
    capsys.readouterr()  # the writers' log lines
    assert main(["versions", "--product", "button", "--products", products, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["parent"], r["origin"], r["active"]) for r in rows] == [
        (1, None, "build", False),
        (2, 1, "calibrate", False),
        (3, 2, "refit", True),
    ]
    assert rows[2]["model_sha256"] == v3.model_sha256
    assert rows[1]["figures"]["image_threshold"] == 0.4 and rows[1]["by"] == "tester"

    assert main(["rollback", "--product", "button", "--products", products, "--by", "bob"]) == 0
    assert "version 2 is active (was 3)" in capsys.readouterr().out
    assert load_bundle(product).version == 2
    assert main(["rollback", "--product", "button", "--products", products]) == 0
    back = load_bundle(product)
    assert (back.version, back.model_sha256, back.thresholds) == (1, v1.model_sha256, v1.thresholds)
    pointer = layout.read_pointer(product)
    assert pointer is not None and (pointer.why, pointer.previous) == ("rollback", 2)

    # version 1 was made from nothing: a plain rollback says so; --to goes anywhere
    assert main(["rollback", "--product", "button", "--products", products]) == 2
    assert "give --to ID (other versions: 2, 3)" in capsys.readouterr().err
    assert main(["rollback", "--product", "button", "--products", products, "--to", "3"]) == 0
    assert load_bundle(product).model_sha256 == v3.model_sha256
    assert main(["rollback", "--product", "button", "--products", products, "--to", "7"]) == 2
    assert "no version 7; versions here: 1, 2, 3" in capsys.readouterr().err

    assert main(["versions", "--product", "button", "--products", products]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("3 versions (* active)") and lines[1].split()[:3] == [
        "id",
        "created",
        "parent",
    ]
    assert [line[:5] for line in lines[2:]] == ["    1", "    2", "*   3"]
    assert v3.model_sha256[:12] in lines[4] and "refit" in lines[4]


def test_pruning_keeps_the_newest_the_active_one_its_parent_and_version_1(product: Path) -> None:
    for image in (0.2, 0.3, 0.4, 0.5):  # versions 2..5
        threshold_version(product, image)
    activate(product, 2, "tester", "rollback")
    threshold_version(product, 0.6, keep=2)  # version 6, made from 2
    assert layout.version_ids(product) == [1, 2, 5, 6]  # 3 and 4 went; 2 is 6's parent
    assert not list((product / "versions").glob(".old-*"))

    activate(product, 5, "tester", "rollback")  # 5's parent (4) is gone: rollback needs --to
    assert prune(product, keep=2) == [2]  # newest 5, 6; active 5; version 1
    assert layout.version_ids(product) == [1, 5, 6]
    assert load_bundle(product).version == 5
    with pytest.raises(layout.VersionError, match="no longer on disk"):
        rollback_target(product)


def test_a_bad_pointer_names_the_file_line_key_and_what_is_allowed(product: Path) -> None:
    threshold_version(product, 0.5)
    pointer = product / "versions" / "active.yaml"
    pointer.write_text(pointer.read_text().replace("version: 2", "version: two"))
    with pytest.raises(BundleError) as err:
        load_bundle(product)
    assert f"{pointer}:1:10 version: " in str(err.value) and "integer" in str(err.value)

    pointer.write_text(pointer.read_text().replace("version: two", "version: 7"))
    with pytest.raises(BundleError, match=r"no version 7 \(.*active.yaml names it\); versions "):
        load_bundle(product)

    pointer.write_text(pointer.read_text().replace("why: calibrate", "why: whim"))
    with pytest.raises(BundleError, match="why: 'whim' is not one of build, calibrate, teach"):
        load_bundle(product)


def test_a_killed_writer_s_leftovers_are_never_listed_and_the_next_writer_removes_them(
    product: Path,
) -> None:
    threshold_version(product, 0.5)
    (product / "versions" / ".new-3").mkdir()  # a staging folder, half written
    (product / "versions" / ".new-3" / "thresholds.yaml").write_text("image: 0.1")
    (product / "versions" / ".old-9").mkdir()  # a pruned one, half deleted
    (product / "versions" / "8").mkdir()  # never: versions are renamed in only when sealed
    (product / "versions" / ".active.yaml.4242.tmp").write_text("version: 8")  # not renamed over
    assert layout.version_ids(product) == [1, 2]
    assert load_bundle(product).version == 2
    v3 = threshold_version(product, 0.6)
    assert v3.version == 3
    left = sorted(p.name for p in (product / "versions").iterdir())
    assert left == [".lock", "2", "3", "8", "active.yaml"]


def test_a_version_the_daemon_would_refuse_is_never_published(product: Path) -> None:
    def wrong_model(stage: Path, parent):  # thresholds made for another model
        bad = parent.thresholds.model_copy(update={"model_sha256": "0" * 64})
        write_thresholds(stage, bad)
        return parent_manifest(parent), list(parent.manifest.files)

    with pytest.raises(VersionStoreError, match="version 2 not written: .* made for model 000"):
        write_version(product, Provenance("calibrate", "tester"), wrong_model)
    assert layout.version_ids(product) == [1] and load_bundle(product).version == 1
    assert sorted(p.name for p in (product / "versions").iterdir()) == [".lock"]


def test_a_version_folder_copied_by_hand_is_refused(product: Path) -> None:
    import shutil

    threshold_version(product, 0.5)
    shutil.copytree(product / "versions" / "2", product / "versions" / "3")
    with pytest.raises(BundleError, match=r"versions/3/manifest.yaml: records version 2, its"):
        load_bundle(product, 3)
    # and a file changed inside a version is refused like in any bundle
    thresholds = product / "versions" / "2" / "thresholds.yaml"
    os.unlink(thresholds)  # a hard link: replace it, as an editor would, not write through it
    thresholds.write_text(thresholds.with_name(MANIFEST).read_text())
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(product)
    assert sha256_of(product / "thresholds.yaml")  # version 1 is unaffected


def test_train_and_export_refuse_to_rewrite_a_product_that_has_versions(product: Path) -> None:
    from inspectd.deploy.export import ExportError, reexport
    from inspectd.train.train_bundle import BuildRequest, build_product

    threshold_version(product, 0.5)
    with pytest.raises(ValueError, match="has versions .* train builds a product from scratch"):
        build_product(BuildRequest(product="button", data=product, out=product))
    with pytest.raises(ExportError, match="has versions"):
        reexport(product)


def test_versions_keep_is_a_station_setting_with_a_floor(tmp_path: Path) -> None:
    path = tmp_path / "station.yaml"
    base = "station: {name: s1}\nproduct: button\ncamera: {source: folder, path: /x}\n"
    path.write_text(base)
    assert load_station_config(path).versions.keep == 10
    path.write_text(base + "versions:\n  keep: 1\n")
    with pytest.raises(ConfigError) as err:
        load_station_config(path)
    assert str(err.value) == f"{path}:5:9 versions.keep: 1 is out of range: must be >= 2"
