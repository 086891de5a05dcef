"""What teaching needs of the version store (issue 34): a new product's first version written
from nothing and not loadable until activated, discarding a version nobody runs, and the work
folder a teach fits in, removed by the next writer once its owner is gone. Real files."""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import pytest

from inspectd.bundle import Bundle, BundleError, load_bundle
from inspectd.versions import layout
from inspectd.versions.listing import history
from inspectd.versions.store import (
    HELD,
    Part,
    Provenance,
    VersionStoreError,
    activate,
    discard,
    parent_manifest,
    workspace,
    write_version,
)

from support.paths import BUNDLE, needs_bundle
from support.products import copy_bundle
from support.versions import threshold_version

pytestmark = needs_bundle


def first_version(product: Path) -> Bundle:
    """A version of a product with none: its files come from the shipped bundle (what a
    teach's fill does with the model it fitted)."""
    source = load_bundle(BUNDLE)

    def fill(stage: Path, parent: Bundle | None) -> tuple[dict, list[str]]:
        assert parent is None  # made from nothing
        for name in source.manifest.files:
            shutil.copy2(source.path / name, stage / name)
        manifest = parent_manifest(source)
        manifest["name"] = product.name
        return manifest, list(source.manifest.files)

    return write_version(product, Provenance("teach", "alice"), fill, activate=False)


def test_a_new_product_s_first_version_is_written_from_nothing_and_loads_once_accepted(
    tmp_path: Path,
) -> None:
    product = tmp_path / "products" / "button"  # no folder yet
    v = first_version(product)
    assert v.version == 2 and v.manifest.version is not None
    assert v.manifest.version.parent is None and v.manifest.version.origin == "teach"
    assert not layout.is_product(product)  # nothing a station could switch to yet
    with pytest.raises(BundleError):
        load_bundle(product)
    assert [(r.id, r.active, r.parent) for r in history(product)] == [(2, False, None)]

    pointer = activate(product, 2, "bob", "teach")
    assert (pointer.version, pointer.previous, pointer.why) == (2, None, "teach")
    assert load_bundle(product).version == 2 and layout.is_product(product)


def test_a_version_nobody_runs_is_discarded_but_never_the_active_one_or_a_parent(
    tmp_path: Path,
) -> None:
    product = copy_bundle(tmp_path / "products", "button")
    v2 = threshold_version(product, 0.5)  # active
    with pytest.raises(VersionStoreError, match="active"):
        discard(product, 2)
    with pytest.raises(VersionStoreError, match="active or the base"):
        discard(product, 1)
    with pytest.raises(VersionStoreError, match="no version 7"):
        discard(product, 7)
    v3 = threshold_version(product, 0.4)  # made from version 2
    activate(product, 1, "bob")
    with pytest.raises(VersionStoreError, match="parent of version"):
        discard(product, 2)
    discard(product, 3)
    assert layout.version_ids(product) == [1, 2] and not v3.path.exists()
    discard(product, 2)  # no longer anyone's parent
    assert layout.version_ids(product) == [1] and not v2.path.exists()
    assert not list((product / "versions").glob(".old-*"))


def test_a_work_folder_is_kept_while_its_owner_lives_and_swept_after(tmp_path: Path) -> None:
    product = copy_bundle(tmp_path / "products", "button")
    with workspace(product) as work:
        (work / "half-written.onnx").write_bytes(b"x")
        threshold_version(product, 0.5)  # another writer meanwhile: the live work stays
        assert work.is_dir()
    assert not work.exists()  # its owner removes it

    # a killed owner: its folder stays with its lock free; the next writer removes it
    dead = product / "versions" / ".work-dead"
    dead.mkdir()
    (dead / HELD).touch()
    with (dead / HELD).open("a") as f:  # a live owner's lock: not removed
        fcntl.flock(f, fcntl.LOCK_EX)
        threshold_version(product, 0.4)
        assert dead.is_dir()
    threshold_version(product, 0.3)
    assert not dead.exists()
    assert all(not p.name.startswith(".work-") for p in (product / "versions").iterdir())


def test_a_version_made_from_one_with_a_parts_list_leaves_the_parent_s_list_sealed(
    tmp_path: Path,
) -> None:
    # the child's parts.sha256 was written through the hard link of its parent's: version 2's
    # list became version 3's and version 2 failed its hash check (found by a refit after a
    # recalibration)
    product = copy_bundle(tmp_path / "products", "button")
    v2 = threshold_version(product, 0.5)
    before = (v2.path / "parts.sha256").read_bytes()

    def fill(stage: Path, parent: Bundle | None) -> tuple[dict, list[str]]:
        assert parent is not None
        return parent_manifest(parent), list(parent.manifest.files)  # parts.sha256 among them

    other = Provenance("calibrate", "bob", [Part("part-2", "cd" * 32)])
    v3 = write_version(product, other, fill)
    assert load_bundle(product, 2).version == 2
    assert (v2.path / "parts.sha256").read_bytes() == before
    assert "part-2" in (v3.path / "parts.sha256").read_text()
