"""What each version of a product is: ``inspectd versions`` prints it, ``inspectd rollback``
picks its target from it. Reads manifests and thresholds only (no hashing: a listing of ten
versions of a large model stays instant); activating a version verifies it in full."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inspectd.versions import layout
from inspectd.versions.layout import MANIFEST

THRESHOLDS = "thresholds.yaml"


@dataclass
class VersionRow:
    id: int
    created: str
    parent: int | None
    origin: str  # build | calibrate | teach | refit
    by: str
    active: bool
    model_sha256: str
    family: str
    figures: dict[str, Any] = field(default_factory=dict)
    parts: int = 0
    note: str = ""
    problem: str | None = None  # the manifest or thresholds could not be read

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _row(product: Path, number: int, active: int) -> VersionRow:
    folder = layout.version_path(product, number)
    row = VersionRow(number, "", None, "build", "", number == active, "", "")
    try:
        manifest = yaml.safe_load((folder / MANIFEST).read_text())
        thresholds = yaml.safe_load((folder / THRESHOLDS).read_text())
        model = manifest["model"]
        row.model_sha256 = manifest["files"][model.get("file", "model.onnx")]
        row.family = model["family"]
        row.created = str(manifest.get("created", ""))
        row.figures = {
            "image_threshold": thresholds["image"],
            "n_good": thresholds["n_good"],
            "frr_bound": thresholds.get("frr_bound"),
        }
        record = manifest.get("version")
        if record is None:  # version 1: as built; its build's metrics say what it does
            auroc = (manifest.get("metrics") or {}).get("image_auroc")
            if auroc is not None:
                row.figures["image_auroc"] = auroc
            command = (manifest.get("training") or {}).get("command")
            row.note = str(command or "")
        else:
            row.created = str(record["created"])
            row.parent, row.origin, row.by = record["parent"], record["origin"], record["by"]
            row.parts, row.note = record.get("parts", 0), record.get("note", "")
            row.figures.update(record.get("figures") or {})
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        row.problem = f"{folder / MANIFEST}: cannot be read ({type(exc).__name__}: {exc})"
    return row


def history(product: Path) -> list[VersionRow]:
    """Every version of ``product``, oldest first (raises layout.VersionError for a pointer
    that cannot be read)."""
    active = layout.active_version(product)
    return [_row(product, n, active) for n in layout.version_ids(product)]


def rollback_target(product: Path) -> int:
    """The version a plain rollback goes to: the one the active version was made from."""
    active = layout.active_version(product)
    rows = {r.id: r for r in history(product)}
    parent = rows[active].parent if active in rows else None
    if parent is None:
        others = ", ".join(str(n) for n in rows if n != active) or "none"
        raise layout.VersionError(
            f"{product.name}: version {active} is active and was made from no other version "
            f"(it is the bundle as built); give --to ID (other versions: {others})"
        )
    if parent not in rows:
        raise layout.VersionError(
            f"{product.name}: version {active} was made from version {parent}, which is no "
            "longer on disk; give --to ID"
        )
    return parent


def describe(row: VersionRow) -> str:
    """One line of ``inspectd versions``."""
    f = row.figures
    bits = [f"image threshold {f['image_threshold']:.6g}"] if "image_threshold" in f else []
    if f.get("n_good") is not None:
        bits.append(f"{f['n_good']} good parts")
    if f.get("frr_bound") is not None:
        bits.append(f"FRR <= {f['frr_bound']:.3g}")
    if f.get("recall") is not None:
        bits.append(f"recall {f['recall']:.1%}")
    if f.get("image_auroc") is not None:
        bits.append(f"AUROC {f['image_auroc']:.3f}")
    mark = "*" if row.active else " "
    parent = "-" if row.parent is None else str(row.parent)
    if row.problem:
        return f"{mark} {row.id:>3}  {row.problem}"
    return (
        f"{mark} {row.id:>3}  {row.created:25}  {parent:>6}  {row.origin:9}  "
        f"{row.by or '-':12}  {row.model_sha256[:12]}  {', '.join(bits)}"
    )


HEADER = (
    f"  {'id':>3}  {'created':25}  {'parent':>6}  {'origin':9}  {'by':12}  {'model':12}  figures"
)
