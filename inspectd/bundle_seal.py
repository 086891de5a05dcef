"""Write and seal product bundles (no torch here: calibrate re-seals bundles on the box)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from inspectd.bundle import MANIFEST, THRESHOLDS, Thresholds, sha256_of


def _dump(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    tmp.replace(path)


def write_thresholds(bundle_dir: Path, thresholds: Thresholds) -> None:
    _dump(bundle_dir / THRESHOLDS, thresholds.model_dump(mode="json", by_alias=True))


def replace_thresholds(bundle_dir: Path, thresholds: Thresholds) -> None:
    """New thresholds for a sealed bundle (what calibrate does on the box): thresholds.yaml,
    then the manifest re-sealed with its own file list."""
    write_thresholds(bundle_dir, thresholds)
    manifest = yaml.safe_load((bundle_dir / MANIFEST).read_text())
    seal(bundle_dir, manifest, list(manifest["files"]))


def seal(bundle_dir: Path, manifest: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Record the sha256 of `files` (relative names) and write manifest.yaml last, so a bundle
    with a manifest is a complete one."""
    manifest = dict(manifest)
    manifest["files"] = {name: sha256_of(bundle_dir / name) for name in sorted(files)}
    _dump(bundle_dir / MANIFEST, manifest)
    return manifest
