"""Frame -> model input: the one preprocessing function.

Training, evaluation, calibration and the daemon all call `preprocess`, so a model never sees
pixels prepared differently from the ones it was trained on. Normalisation to float is not
here: it is inside the exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from inspectd.config.base import StrictModel
from inspectd.imagefile import read_image


class PreprocessError(ValueError):
    """The frame cannot be turned into a model input; the part gets an ERROR verdict."""


class PreprocessSpec(StrictModel):
    """How frames become model inputs; recorded in the bundle manifest."""

    size: tuple[int, int] = Field(description="model input (height, width) in pixels")
    roi: tuple[int, int, int, int] | None = Field(
        None,
        description="crop (x, y, width, height) in frame pixels before resizing; null = whole "
        "frame",
    )
    color: Literal["rgb", "mono"] = Field(
        "rgb", description="rgb: colour model input; mono: grey replicated to 3 channels"
    )
    source_size: tuple[int, int] | None = Field(
        None, description="expected frame (height, width); frames of another size are ERROR"
    )

    @model_validator(mode="after")
    def _positive(self) -> PreprocessSpec:
        if min(self.size) <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.roi is not None and (min(self.roi[2:]) <= 0 or min(self.roi[:2]) < 0):
            raise ValueError(f"roi needs x, y >= 0 and width, height > 0, got {self.roi}")
        return self


@dataclass(frozen=True, slots=True)
class Geometry:
    """Maps model-input pixel (u, v) to frame pixel (x0 + u * sx, y0 + v * sy)."""

    x0: float
    y0: float
    sx: float
    sy: float


def check_image(image: np.ndarray | None) -> None:
    """Reject what a camera or file should never deliver, with the reason."""
    if image is None:
        raise PreprocessError("no image")
    if image.dtype != np.uint8:
        raise PreprocessError(f"unsupported pixel type {image.dtype}; expected 8-bit (uint8)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        channels = image.shape[2] if image.ndim == 3 else f"ndim={image.ndim}"
        raise PreprocessError(f"unsupported channel count {channels}; expected 1 (mono) or 3 (BGR)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise PreprocessError(f"empty image ({image.shape[1]}x{image.shape[0]})")


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Geometry]:
    """uint8 HxW / HxWx1 / HxWx3 (BGR) -> (uint8 size[0] x size[1] x 3 RGB, geometry).

    Raises PreprocessError for anything that is not a frame of the expected kind.
    """
    check_image(image)
    h, w = image.shape[:2]
    if spec.source_size is not None and (h, w) != tuple(spec.source_size):
        raise PreprocessError(
            f"frame is {w}x{h}, the product expects {spec.source_size[1]}x{spec.source_size[0]}"
        )
    x0, y0, rw, rh = spec.roi if spec.roi is not None else (0, 0, w, h)
    if x0 + rw > w or y0 + rh > h:
        raise PreprocessError(f"roi {spec.roi} does not fit in the {w}x{h} frame")
    crop = image[y0 : y0 + rh, x0 : x0 + rw]

    out_h, out_w = spec.size
    # INTER_AREA when shrinking (no aliasing of fine scratches), linear when enlarging.
    interp = cv2.INTER_AREA if (out_w < rw or out_h < rh) else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (out_w, out_h), interpolation=interp)
    if resized.ndim == 3 and resized.shape[2] == 1:
        resized = resized[:, :, 0]

    if resized.ndim == 2:
        rgb = cv2.cvtColor(resized, cv2.COLOR_GRAY2RGB)
    elif spec.color == "mono":
        rgb = cv2.cvtColor(cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2RGB)
    else:
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return rgb, Geometry(x0, y0, rw / out_w, rh / out_h)


def load_inputs(paths: Sequence[str | Path], spec: PreprocessSpec) -> np.ndarray:
    """Files -> uint8 N x H x W x 3 model inputs, for training, evaluation and calibration."""
    out = np.empty((len(paths), *spec.size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            out[i] = preprocess(read_image(p), spec)[0]
        except PreprocessError as exc:
            raise PreprocessError(f"{p}: {exc}") from exc
    return out
