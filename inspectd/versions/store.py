"""Write a product's versions crash-safely, activate one, prune old ones.

A version is written into ``versions/.new-<n>`` (files, then the manifest sealed last, each
fsynced), loaded back as the daemon would, renamed to ``versions/<n>`` and only then, when
asked, made active by replacing ``versions/active.yaml`` atomically. A kill at any moment
leaves the previous active version loadable and no half-written version visible: until the
rename there is only a staging folder, which nothing lists and the next writer removes.

Files a version keeps from its parent (the model, when only thresholds change) are hard
links: no second copy of a model on a small disk. Nothing in a sealed version is written in
place (every writer here replaces files), so a link never changes under another version.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
import yaml

from inspectd.bundle import Bundle, BundleError, load_bundle, load_bundle_folder, sha256_of
from inspectd.bundle_seal import seal
from inspectd.durable import fsync_dir, fsync_file, link_or_copy
from inspectd.versions import layout
from inspectd.versions.layout import (
    BASE,
    LOCK,
    MANIFEST,
    STAGING,
    TRASH,
    ActivePointer,
    Why,
    versions_dir,
)

log = structlog.get_logger(__name__)

DEFAULT_KEEP = 10
PARTS_FILE = "parts.sha256"
# where a writer can be stopped (layout.on_step), in order
STEPS = ("staged", "sealed", "published", "pointer_written", "activated")

Origin = Literal["build", "calibrate", "teach", "refit"]


@dataclass(frozen=True)
class Part:
    """A part a version was made from: a file's path or a camera part id, and its sha256 (of
    the file, or of the frame's pixels for a camera part)."""

    name: str
    sha256: str
    role: str = "good"  # good | defect


@dataclass
class Provenance:
    origin: Origin
    by: str
    parts: list[Part] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


# fill(staging folder, parent) -> (manifest without files and version, files to seal). It
# writes the new files into the staging folder; listed files it did not write are linked from
# the parent. The parent is None for a product's first version (taught from nothing).
Fill = Callable[[Path, Bundle | None], tuple[dict[str, Any], list[str]]]
WORK = ".work-"  # versions/.work-<...>: a teach's scratch folder (never listed, swept when dead)
HELD = ".held"  # locked by the process that uses a work folder


class VersionStoreError(Exception):
    """A version could not be written or activated; the active one is unchanged."""


@contextlib.contextmanager
def locked(product: Path) -> Iterator[None]:
    """One writer per product at a time (a lock the kernel drops with a killed process)."""
    folder = versions_dir(product)
    if not folder.is_dir():
        folder.mkdir(parents=True)  # a product taught from nothing has no folder yet
        fsync_dir(product)
    with (folder / LOCK).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def parent_manifest(parent: Bundle) -> dict[str, Any]:
    """The parent's manifest as written (key order kept), without what each version seals anew."""
    doc = yaml.safe_load((parent.path / MANIFEST).read_text())
    return {k: v for k, v in doc.items() if k not in ("files", "version")}


def write_version(
    product: Path,
    provenance: Provenance,
    fill: Fill,
    *,
    parent: int | None = None,
    activate: bool = True,
    keep: int = DEFAULT_KEEP,
) -> Bundle:
    """Write a new version of ``product`` from ``parent`` (default: the active one) and return
    it loaded; with ``activate`` stations load it from now on. Then prune to ``keep``.

    A product with no version at all (a new one, taught from its first parts) gets its first
    version from nothing: ``fill`` is given no parent. It is version 2, since version 1 is the
    bundle as built at the folder's top, which such a product never had; and it is not a
    product stations can load until it is activated."""
    with locked(product):
        _sweep(product)
        base = _parent(product, parent)
        number = max(layout.version_ids(product) + [BASE]) + 1
        stage = versions_dir(product) / f"{STAGING}{number}"
        stage.mkdir()
        try:
            _stage(stage, product, number, base, provenance, fill)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)  # a kill leaves it to the next writer
            raise
        layout.on_step("sealed")
        final = layout.version_path(product, number)
        os.rename(stage, final)
        fsync_dir(versions_dir(product))
        layout.on_step("published")
        log.info(
            "version.written",
            product=product.name,
            version=number,
            parent=None if base is None else base.version,
            origin=provenance.origin,
        )
        if activate:
            _point(product, number, provenance.by, provenance.origin)
        prune(product, keep, _locked=True)
    return load_bundle(product, number)


def _parent(product: Path, parent: int | None) -> Bundle | None:
    """The version a new one is made from; None for a product with no version yet."""
    if parent is None and not layout.version_ids(product) and layout.read_pointer(product) is None:
        return None
    try:
        return load_bundle(product, parent)
    except BundleError as exc:
        raise VersionStoreError(f"no version written: {exc}") from exc


def _stage(
    stage: Path,
    product: Path,
    number: int,
    base: Bundle | None,
    provenance: Provenance,
    fill: Fill,
) -> None:
    """Write, seal, fsync and check version ``number`` in its staging folder."""
    manifest, files = fill(stage, base)
    for name in files:  # what the version keeps from its parent
        if not (stage / name).exists():
            if base is None:
                raise VersionStoreError(f"version {number}: fill did not write {name}")
            _link(base.path / name, stage / name)
    if provenance.parts:
        _write_parts(stage / PARTS_FILE, provenance.parts)
        files = [*files, PARTS_FILE]
    manifest["version"] = {
        "id": number,
        "parent": None if base is None else base.version,
        "origin": provenance.origin,
        "by": provenance.by,
        "created": layout.now_utc(),
        "parts": len(provenance.parts),
        "parts_file": PARTS_FILE if provenance.parts else None,
        "figures": provenance.figures,
        "note": provenance.note,
    }
    layout.on_step("staged")
    seal(stage, manifest, sorted(set(files)))  # the manifest last
    for f in stage.rglob("*"):
        fsync_file(f)
    fsync_dir(stage)
    try:  # the daemon's own check, before anyone can see it
        load_bundle_folder(stage, product.name, number)
    except BundleError as exc:
        raise VersionStoreError(f"version {number} not written: {exc}") from exc


def activate(product: Path, version: int, by: str, why: Why = "activate") -> ActivePointer:
    """Make ``version`` the one stations load (after loading it as they would)."""
    with locked(product):
        try:
            load_bundle(product, version)
        except BundleError as exc:
            raise VersionStoreError(f"version {version} not activated: {exc}") from exc
        return _point(product, version, by, why)


def _point(product: Path, version: int, by: str, why: Why) -> ActivePointer:
    before = layout.active_version(product)
    pointer = ActivePointer(
        version=version,
        previous=before if before in layout.version_ids(product) else None,
        by=by,
        at=layout.now_utc(),
        why=why,
    )
    layout.write_pointer(product, pointer)
    layout.on_step("activated")
    log.info("version.activated", product=product.name, version=version, why=why, by=by)
    return pointer


def prune(product: Path, keep: int = DEFAULT_KEEP, *, _locked: bool = False) -> list[int]:
    """Delete all but the newest ``keep`` versions, never the active one nor its parent, never
    version 1 (the bundle as installed, at the product folder's top). Returns those deleted."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    if not _locked:
        with locked(product):
            return prune(product, keep, _locked=True)
    ids = layout.version_ids(product)
    active = layout.active_version(product)
    kept = set(ids[-keep:]) | {BASE, active}
    parent = _parent_of(product, active)
    if parent is not None:
        kept.add(parent)
    gone = [n for n in ids if n not in kept]
    folder = versions_dir(product)
    for n in gone:
        trash = folder / f"{TRASH}{n}"
        os.rename(layout.version_path(product, n), trash)  # out of every listing at once
    if gone:
        fsync_dir(folder)
        for n in gone:
            shutil.rmtree(folder / f"{TRASH}{n}")
        log.info("version.pruned", product=product.name, versions=gone, keep=keep)
    return gone


def _parent_of(product: Path, version: int) -> int | None:
    if version == BASE:
        return None
    doc = yaml.safe_load((layout.version_path(product, version) / MANIFEST).read_text())
    return (doc.get("version") or {}).get("parent")


def _sweep(product: Path) -> None:
    """Remove what a killed writer left: staging and half-deleted folders, a pointer's temp."""
    for entry in versions_dir(product).iterdir():
        if entry.is_dir() and entry.name.startswith((STAGING, TRASH)):
            shutil.rmtree(entry)
        elif entry.is_dir() and entry.name.startswith(WORK) and not _in_use(entry):
            shutil.rmtree(entry)
        elif entry.name.startswith(layout.POINTER_TEMP) and entry.name.endswith(".tmp"):
            entry.unlink()
        else:
            continue
        log.warning("version.stale_removed", product=product.name, left=entry.name)


@contextlib.contextmanager
def workspace(product: Path) -> Iterator[Path]:
    """A scratch folder in ``versions/`` (same file system: its files become a version's by
    hard links) for work done before the version is written, outside the product's lock (a
    teach's fit and calibration take a minute; a rollback meanwhile must not wait). A killed
    owner leaves it behind; the next writer removes it, seeing its lock free."""
    import tempfile

    folder = versions_dir(product)
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=WORK, dir=folder))
    try:
        with (work / HELD).open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _in_use(work: Path) -> bool:
    """Whether a live process holds this work folder (the kernel drops a killed one's lock)."""
    try:
        with (work / HELD).open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def discard(product: Path, version: int) -> None:
    """Delete a version nobody runs (a taught one the operator did not accept): never the
    active one, version 1, nor one another version was made from."""
    with locked(product):
        try:
            layout.checked_path(product, version)
        except layout.VersionError as exc:
            raise VersionStoreError(str(exc)) from exc
        if version == BASE or version == layout.active_version(product):
            raise VersionStoreError(f"{product.name}: version {version} is active or the base")
        children = [n for n in layout.version_ids(product) if _parent_of(product, n) == version]
        if children:
            raise VersionStoreError(
                f"{product.name}: version {version} is the parent of version(s) "
                f"{', '.join(map(str, children))}; it stays"
            )
        folder = versions_dir(product)
        trash = folder / f"{TRASH}{version}"
        os.rename(layout.version_path(product, version), trash)
        fsync_dir(folder)
        shutil.rmtree(trash)
        log.info("version.discarded", product=product.name, version=version)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    link_or_copy(source, target)


def _write_parts(path: Path, parts: list[Part]) -> None:
    # replaced, never written in place: the stage may hold a hard link of the parent's list,
    # and writing through it rewrote the parent's sealed file (its hash check then failed)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        for p in parts:
            f.write(f"{p.sha256}  {p.role}  {p.name}\n")
    os.replace(tmp, path)


def file_part(path: Path, role: str = "good") -> Part:
    return Part(str(path), sha256_of(path), role)
