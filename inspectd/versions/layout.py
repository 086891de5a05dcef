"""Where a product's versions lie, and the pointer to the active one (see the package docstring).

A product folder of the layout from before versions (no ``versions/``) is version 1 and active,
so the bundles built by ``make demo-bundle`` and every copy of them load as they always did.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from inspectd.config.base import StrictModel
from inspectd.config.loader import ConfigError, load_yaml_model
from inspectd.durable import fsync_dir

MANIFEST = "manifest.yaml"
VERSIONS = "versions"
ACTIVE = "active.yaml"
BASE = 1  # the bundle at the top of the product folder
STAGING = ".new-"  # versions/.new-<n>: being written
TRASH = ".old-"  # versions/.old-<n>: being deleted
LOCK = ".lock"
POINTER_TEMP = f".{ACTIVE}."  # versions/.active.yaml.<pid>.tmp: a pointer being written

Why = Literal["build", "calibrate", "teach", "refit", "rollback", "activate"]


def _no_hook(step: str) -> None:
    return None


# Called with the name of each step a version write or activation has reached (store.STEPS):
# the crash tests stop a real writer there and kill it. Nothing else sets it.
on_step: Callable[[str], None] = _no_hook


class VersionError(Exception):
    """A version that does not exist, or a pointer that cannot be read; says which file."""


class ActivePointer(StrictModel):
    """versions/active.yaml: which version stations load, and who made it so."""

    version: int = Field(ge=BASE, description="the active version")
    previous: int | None = Field(None, ge=BASE, description="the version active before it")
    by: str = Field(min_length=1, description="who activated it")
    at: str = Field(description="when, UTC ISO 8601")
    why: Why = Field(description="what activated it")


def versions_dir(product: Path) -> Path:
    return product / VERSIONS


def version_path(product: Path, version: int) -> Path:
    """The folder holding ``version`` (it may not exist)."""
    return product if version == BASE else product / VERSIONS / str(version)


def has_base(product: Path) -> bool:
    return (product / MANIFEST).is_file()


def version_ids(product: Path) -> list[int]:
    """Every complete version, oldest first: the base when the folder has one, and each
    ``versions/<n>`` (a version is renamed there only once it is sealed)."""
    ids = [BASE] if has_base(product) else []
    folder = versions_dir(product)
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.isdigit() and int(entry.name) > BASE and (entry / MANIFEST).is_file():
                ids.append(int(entry.name))
    return sorted(ids)


def has_versions(product: Path) -> bool:
    """Versions beyond the bundle as built, or a pointer: tools that rewrite a bundle in place
    (train, export) must not, since stations load the active version, not the top."""
    return (versions_dir(product) / ACTIVE).is_file() or any(n > BASE for n in version_ids(product))


def read_pointer(product: Path) -> ActivePointer | None:
    """The pointer, or None when the product has none (version 1 is active)."""
    path = versions_dir(product) / ACTIVE
    if not path.is_file():
        return None
    try:
        return load_yaml_model(path, ActivePointer)
    except ConfigError as exc:
        raise VersionError(str(exc)) from exc


def active_version(product: Path) -> int:
    pointer = read_pointer(product)
    return BASE if pointer is None else pointer.version


def checked_path(product: Path, version: int) -> Path:
    """The folder of an existing version; VersionError naming what is there otherwise."""
    path = version_path(product, version)
    if (path / MANIFEST).is_file():
        return path
    there = ", ".join(map(str, version_ids(product))) or "none"
    pointer = read_pointer(product)
    named = (
        f" ({versions_dir(product) / ACTIVE} names it)"
        if pointer is not None and pointer.version == version
        else ""
    )
    raise VersionError(f"{product}: no version {version}{named}; versions here: {there}")


def is_product(folder: Path) -> bool:
    """A bundle of the old layout, or a product whose versions have a pointer."""
    return has_base(folder) or (versions_dir(folder) / ACTIVE).is_file()


def product_names(products_dir: Path) -> list[str]:
    if not products_dir.is_dir():
        return []
    return sorted(p.name for p in products_dir.iterdir() if p.is_dir() and is_product(p))


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- durable writes ------------------------------------------------------------------------------


def write_pointer(product: Path, pointer: ActivePointer) -> None:
    """Replace versions/active.yaml atomically: a reader sees the old pointer or the new one,
    after a crash too (temp file fsynced, renamed over, folder fsynced)."""
    folder = versions_dir(product)
    tmp = folder / f"{POINTER_TEMP}{os.getpid()}.tmp"
    with tmp.open("w") as f:
        f.write(yaml.safe_dump(pointer.model_dump(mode="json"), sort_keys=False))
        f.flush()
        os.fsync(f.fileno())
    on_step("pointer_written")
    os.replace(tmp, folder / ACTIVE)
    fsync_dir(folder)
