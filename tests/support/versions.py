"""Versions of the tests' button bundle written the way calibrate (and later teach and refit)
write them: through inspectd.versions.store."""

from __future__ import annotations

import uuid
from pathlib import Path

from inspectd.bundle import Bundle, sha256_of
from inspectd.bundle_seal import write_thresholds
from inspectd.versions.store import Part, Provenance, parent_manifest, write_version


def threshold_version(product: Path, image: float, *, keep: int = 10, by: str = "tester") -> Bundle:
    """A version with the active model and image threshold ``image`` (what calibrate makes)."""

    def fill(stage: Path, parent: Bundle) -> tuple[dict, list[str]]:
        write_thresholds(stage, parent.thresholds.model_copy(update={"image": image}))
        return parent_manifest(parent), list(parent.manifest.files)

    provenance = Provenance(
        "calibrate", by, [Part("part-1", "ab" * 32)], {"image_threshold": image, "n_good": 1}
    )
    return write_version(product, provenance, fill, keep=keep)


def model_version(product: Path, image: float, *, activate: bool = True) -> Bundle:
    """A version whose model.onnx has other bytes (the same graph under another doc_string:
    another sha256, the same scores) and image threshold ``image`` (what a refit makes)."""
    import onnx

    def fill(stage: Path, parent: Bundle) -> tuple[dict, list[str]]:
        model = onnx.load(str(parent.model_path))
        model.doc_string = f"refit {uuid.uuid4().hex}"
        onnx.save(model, str(stage / parent.manifest.model.file))
        sha = sha256_of(stage / parent.manifest.model.file)
        update = {"image": image, "model_sha256": sha}
        write_thresholds(stage, parent.thresholds.model_copy(update=update))
        return parent_manifest(parent), list(parent.manifest.files)

    provenance = Provenance("refit", "tester", figures={"image_threshold": image})
    return write_version(product, provenance, fill, activate=activate)
