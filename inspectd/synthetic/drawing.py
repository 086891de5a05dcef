"""Small numpy/cv2 drawing helpers of the synthetic button's scene and defects."""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

F32 = np.float32


@lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each float32 size x size, read-only (cached)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(F32)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def dist(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Distance in pixels from (cx, cy); sqrt of squares is several times faster than hypot."""
    dx = xx - F32(cx)
    dy = yy - F32(cy)
    return np.sqrt(dx * dx + dy * dy)


def disk(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """Anti-aliased disk coverage 0..1 (one-pixel ramp at the edge)."""
    return np.clip(radius - dist(xx, yy, cx, cy) + 0.5, 0.0, 1.0)


def uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance noise, float32, from random bytes (256-level uniform). Not
    Gaussian: drawing bytes is several times cheaper, and the difference does not show once
    blurred or at sensor-noise amplitudes."""
    raw = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
    return (raw.astype(F32) - F32(127.5)) * F32(math.sqrt(12.0) / 256.0)


def planes(plane: np.ndarray) -> np.ndarray:
    """float32 H x W -> H x W x 3 copy. numpy broadcasting against a last axis of 3 is about
    eight times slower than cv2.merge plus a same-shape operation, so 3-channel maths uses this."""
    return cv2.merge([plane, plane, plane])


def tinted(plane: np.ndarray, colour: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """float32 H x W times a BGR colour -> H x W x 3."""
    return cv2.merge([plane * F32(c) for c in colour])


def fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> the int32 N x 1 x 2 fixed-point form cv2 draws with shift=4."""
    return np.round(np.asarray(points, np.float64) * 16.0).astype(np.int32).reshape(-1, 1, 2)


def polyline(size: int, points: np.ndarray, thickness: int) -> np.ndarray:
    """Anti-aliased open polyline coverage 0..1, float32 size x size."""
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [fixed(points)], False, 255, thickness, cv2.LINE_AA, 4)
    return canvas.astype(F32) / 255.0


def low_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Smooth noise, roughly unit amplitude, float32 size x size: a cells x cells random grid
    upsampled bicubically (cheap, and no Gaussian tails)."""
    coarse = uniform_noise(rng, (cells, cells))
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
