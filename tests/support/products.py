"""Product folders for daemon tests: copies of the tests' button bundle under other names."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from inspectd.bundle import MANIFEST, load_bundle
from inspectd.bundle_seal import seal

from support.paths import BUNDLE


def copy_bundle(products_dir: Path, name: str) -> Path:
    """The tests' button bundle copied to products_dir/name; the manifest's name follows the
    folder (the daemon finds a running product's bundle again by its name, e.g. on reload)."""
    target = products_dir / name
    shutil.copytree(BUNDLE, target)
    if name != "button":
        manifest = yaml.safe_load((target / MANIFEST).read_text())
        manifest["name"] = name
        seal(target, manifest, list(manifest["files"]))
    assert load_bundle(target).name == name
    return target
