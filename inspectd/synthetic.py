"""Synthetic "button" product: deterministic photographs of a sewing button on a conveyor.

This is the stand-in for a real button inspection data set. A four- (or two-) hole plastic
button is seen from above on a grey woven belt; a fixture holds it, so good parts vary only
modestly in position, size, rotation of the hole pattern and lighting. A reconstruction model is
trained on good parts only and has to flag the six defect types in `DEFECTS`.

How a frame is made (all float32, BGR, 0..255 scale):

* a height field (concave face, raised rim, countersunk holes) is shaded with a directional
  light (Lambert + Blinn specular), so the rim is lighter on the lit side and darker opposite;
* the shaded part is composited over a textured belt carrying a soft drop shadow, and seen
  through the holes (in shadow, with darker walls);
* frame-wide light fall-off, vignetting, a slight optical blur and sensor noise come last.

A defect is drawn into the *same* scene before compositing (albedo for scratch, crack and stain,
silhouette for chipped_rim, hole geometry for missing_hole, an overlay for thread). Its geometric
coverage, dilated by the 1 px footprint of the final blur, is the ground-truth mask, so a good
render and a defect render of the same (seed, split, index) are identical outside the mask.

Determinism: the part (pose, lighting, textures, sensor noise) comes from
``numpy.random.default_rng([seed, split_code, 0, index])`` and the defect from
``default_rng([seed, split_code, 1 + DEFECTS.index(defect), index])``; there is no global or
time-based randomness, so the same arguments give byte-identical images, and image ``i`` does
not change when the number of images asked for changes.

Only numpy and cv2: the daemon imports this module (e.g. for demos), so no torch here.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

DEFECTS: tuple[str, ...] = ("scratch", "crack", "chipped_rim", "missing_hole", "stain", "thread")
"""Defect type names; they are also the MVTec folder names under test/ and ground_truth/."""

SPLITS: tuple[str, ...] = ("train", "test")
"""RNG splits: train good parts and test parts come from disjoint random streams."""

DEFECT_INDEX_STRIDE = 1_000_000
"""`write_dataset` renders test/<defect>/NNN.png from part index (k + 1) * stride + NNN, where
k = DEFECTS.index(defect), so defective parts are different parts from those in test/good."""

_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]  # fixed, so PNG bytes are reproducible
_F32 = np.float32


@dataclass(frozen=True)
class ButtonStyle:
    """The product: what every part looks like and how much good parts may vary.

    The jitter ranges are half-widths of uniform distributions and are deliberately modest (a
    fixture holds the part): a small convolutional autoencoder must be able to reconstruct every
    good part, so pose and lighting may not vary more than a real station would let them.
    """

    size: int = 256
    """Frame side in pixels (the frame is square). Line widths scale with size / 256."""
    holes: int = 4
    """Holes in the button, 2 or 4; fixed per product."""
    colour: tuple[int, int, int] = (170, 120, 64)
    """Nominal plastic colour, BGR 0..255 (a mid steel blue, so both light and dark marks show)."""
    diameter: float = 0.75
    """Nominal button diameter as a fraction of the frame width."""
    translate: float = 0.03
    """Centre offset, +- fraction of the frame size, independently in x and y."""
    scale: float = 0.03
    """Diameter jitter, +- fraction."""
    rotation_deg: float = 20.0
    """Rotation of the hole pattern around the centre, +- degrees."""
    brightness: float = 0.08
    """Overall exposure gain jitter, +- fraction."""
    light_jitter_deg: float = 15.0
    """Azimuth jitter of the light (nominally from the upper left), +- degrees."""
    colour_jitter: float = 0.03
    """Per-channel jitter of the plastic colour, +- fraction (batch-to-batch variation)."""

    def __post_init__(self) -> None:
        if self.holes not in (2, 4):
            raise ValueError(f"holes must be 2 or 4, got {self.holes}")
        if self.size < 64:
            raise ValueError(f"size must be at least 64 px, got {self.size}")
        if len(self.colour) != 3 or not all(0 <= int(c) <= 255 for c in self.colour):
            raise ValueError(f"colour must be three BGR values in 0..255, got {self.colour}")
        if not 0.3 <= self.diameter <= 0.9:
            raise ValueError(f"diameter must be within 0.3..0.9 of the frame, got {self.diameter}")
        for name in ("translate", "scale", "brightness", "colour_jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.2:
                raise ValueError(f"{name} must be within 0..0.2, got {value}")
        for name in ("rotation_deg", "light_jitter_deg"):
            value = getattr(self, name)
            if not 0.0 <= value <= 180.0:
                raise ValueError(f"{name} must be within 0..180 degrees, got {value}")


# --------------------------------------------------------------------------------------------
# small helpers


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each float32 size x size, read-only (cached)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(_F32)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _dist(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Distance in pixels from (cx, cy); sqrt of squares is several times faster than hypot."""
    dx = xx - _F32(cx)
    dy = yy - _F32(cy)
    return np.sqrt(dx * dx + dy * dy)


def _disk(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """Anti-aliased disk coverage 0..1 (one-pixel ramp at the edge)."""
    return np.clip(radius - _dist(xx, yy, cx, cy) + 0.5, 0.0, 1.0)


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance noise, float32, from random bytes (256-level uniform). Not
    Gaussian: drawing bytes is several times cheaper, and the difference does not show once
    blurred or at sensor-noise amplitudes."""
    raw = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
    return (raw.astype(_F32) - _F32(127.5)) * _F32(math.sqrt(12.0) / 256.0)


def _planes(plane: np.ndarray) -> np.ndarray:
    """float32 H x W -> H x W x 3 copy. numpy broadcasting against a last axis of 3 is about
    eight times slower than cv2.merge plus a same-shape operation, so 3-channel maths uses this."""
    return cv2.merge([plane, plane, plane])


def _tinted(plane: np.ndarray, colour: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """float32 H x W times a BGR colour -> H x W x 3."""
    return cv2.merge([plane * _F32(c) for c in colour])


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> the int32 N x 1 x 2 fixed-point form cv2 draws with shift=4."""
    return np.round(np.asarray(points, np.float64) * 16.0).astype(np.int32).reshape(-1, 1, 2)


def _polyline(size: int, points: np.ndarray, thickness: int) -> np.ndarray:
    """Anti-aliased open polyline coverage 0..1, float32 size x size."""
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [_fixed(points)], False, 255, thickness, cv2.LINE_AA, 4)
    return canvas.astype(_F32) / 255.0


def _low_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Smooth noise, roughly unit amplitude, float32 size x size: a cells x cells random grid
    upsampled bicubically (cheap, and no Gaussian tails)."""
    grid = _uniform_noise(rng, (cells, cells))
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


# --------------------------------------------------------------------------------------------
# the scene: one good part; defects edit it before `compose`


@dataclass
class _Scene:
    """One part in front of the camera, as editable layers (pixels, BGR float32, 0..255).

    `sample` draws a good part; a defect renderer then edits albedo, silhouette, holes, shadow
    or overlays; `compose` turns the layers into the photograph.
    """

    size: int
    unit: float  # size / 256: line widths and texture scales in 256-frame pixels
    cx: float
    cy: float
    radius: float  # button radius in pixels
    hole_centres: list[tuple[float, float]]
    hole_radius: float
    light: np.ndarray  # unit vector (x, y, z) towards the light, image axes (y down), z up
    gain: float
    belt: np.ndarray  # S x S x 3 belt texture (before shadow)
    albedo: np.ndarray  # S x S x 3 plastic colour and texture
    texture: np.ndarray  # S x S plastic texture factor around 1 (for tinting stains)
    noise: np.ndarray  # S x S x 3 sensor noise, 0..255 scale
    button_alpha: np.ndarray  # S x S silhouette coverage 0..1
    skip_hole: int | None = None  # missing_hole: this hole is never drilled
    shadow_relief: np.ndarray | None = None  # S x S factor on the drop shadow (chipped_rim)
    overlays: list[tuple[np.ndarray, np.ndarray | float]] = field(default_factory=list)
    """(alpha, colour) painted after compositing; colour BGR (3,) or a multiplier (float)."""

    @property
    def bevel_width(self) -> float:
        """Width of the countersink around each hole, pixels."""
        return 0.07 * self.radius

    @property
    def shadow_shift(self) -> np.ndarray:
        """The drop shadow is the silhouette moved by this (x, y), pixels, away from the light."""
        lx, ly = float(self.light[0]), float(self.light[1])
        return -0.06 * self.radius * np.array([lx, ly]) / math.hypot(lx, ly)

    @classmethod
    def sample(cls, rng: np.random.Generator, style: ButtonStyle) -> _Scene:
        """Draw one good part. The order of draws is fixed and independent of any defect."""
        s = style.size
        unit = s / 256.0
        xx, yy = _grid(s)

        # pose and lighting (scalars first)
        cx = s / 2.0 + rng.uniform(-1, 1) * style.translate * s
        cy = s / 2.0 + rng.uniform(-1, 1) * style.translate * s
        radius = style.diameter * s / 2.0 * (1.0 + rng.uniform(-1, 1) * style.scale)
        nominal = 45.0 if style.holes == 4 else 0.0
        angle = math.radians(nominal + rng.uniform(-1, 1) * style.rotation_deg)
        azimuth = math.radians(225.0 + rng.uniform(-1, 1) * style.light_jitter_deg)
        elevation = math.radians(50.0 + rng.uniform(-4, 4))
        gain = 1.0 + rng.uniform(-1, 1) * style.brightness
        colour = np.asarray(style.colour, _F32) * (
            1.0 + rng.uniform(-1, 1, 3).astype(_F32) * style.colour_jitter
        )
        belt_grey = np.asarray([96.0, 97.0, 95.0], _F32) * (1.0 + _F32(rng.uniform(-0.04, 0.04)))
        light = np.asarray(
            [
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation),
            ],
            _F32,
        )

        # hole layout: symmetric around the centre
        if style.holes == 4:
            pitch, hole_radius = 0.25 * radius, 0.085 * radius
        else:
            pitch, hole_radius = 0.21 * radius, 0.10 * radius
        hole_centres = [
            (
                cx + pitch * math.cos(angle + 2 * math.pi * k / style.holes),
                cy + pitch * math.sin(angle + 2 * math.pi * k / style.holes),
            )
            for k in range(style.holes)
        ]

        # belt: woven grey conveyor with fine fibre noise, streaks along the travel direction
        # (x) and faint dirt
        fine = cv2.GaussianBlur(_uniform_noise(rng, (s, s)), (3, 3), 0.8)
        dirt = _low_noise(rng, 7, s)
        streak = cv2.GaussianBlur(_uniform_noise(rng, (s, 1)), (1, 5), 1.2)
        phase = rng.uniform(0, 2 * math.pi, 2)
        period = 5.0 * unit
        axis = np.arange(s, dtype=_F32) * _F32(2 * math.pi / period)
        weave = np.sin(axis + _F32(phase[1]))[:, None] * np.sin(axis + _F32(phase[0]))[None, :]
        belt_tex = 5.0 * fine + 4.0 * dirt + 3.0 * streak + 3.5 * weave
        belt = cv2.merge([belt_tex + g for g in belt_grey])

        # plastic: fine grain, mottling and faint concentric turning marks
        grain = cv2.GaussianBlur(_uniform_noise(rng, (s, s)), (3, 3), 0.7)
        mottle = _low_noise(rng, 5, s)
        ring_phase = _F32(rng.uniform(0, 2 * math.pi))
        r = _dist(xx, yy, cx, cy)
        rings = np.sin(r * _F32(2 * math.pi / (4.0 * unit)) + ring_phase + 1.5 * mottle)
        tex = 0.022 * grain + 0.02 * mottle + 0.012 * rings
        texture = 1.0 + tex
        albedo = _tinted(texture, colour)

        noise = _uniform_noise(rng, (s, s, 3))
        noise *= _F32(1.6)

        return cls(
            size=s,
            unit=unit,
            cx=cx,
            cy=cy,
            radius=radius,
            hole_centres=hole_centres,
            hole_radius=hole_radius,
            light=light,
            gain=gain,
            belt=belt,
            albedo=albedo,
            texture=texture,
            noise=noise,
            button_alpha=np.clip(radius - r + 0.5, 0.0, 1.0),
        )

    def drilled_holes(self) -> list[tuple[float, float]]:
        return [c for k, c in enumerate(self.hole_centres) if k != self.skip_hole]

    def compose(self) -> np.ndarray:
        """Render the scene: float32 S x S x 3 BGR, 0..255 scale, before quantisation."""
        s, rad = self.size, self.radius
        xx, yy = _grid(s)
        dx, dy = xx - _F32(self.cx), yy - _F32(self.cy)
        rn = np.sqrt(dx * dx + dy * dy) * _F32(1.0 / rad)
        lx, ly, lz = (float(v) for v in self.light)
        lxy = math.hypot(lx, ly)
        ux, uy = lx / lxy, ly / lxy  # unit direction towards the light in the image plane

        # height field in pixels: concave face, raised rim, rounded outer edge
        rim = (rn - _F32(0.875)) * _F32(1.0 / 0.06)
        height = _F32(rad) * (
            _F32(0.035) * np.minimum(rn, 1.0) ** 2 + _F32(0.06) * np.exp(-(rim * rim))
        )
        height *= _smoothstep(1.0, 0.93, rn)

        # holes, each worked on in a small window: countersink in the height field, coverage,
        # and what is seen through them (the belt below, in shadow except for a crescent of
        # light that falls through on the side away from the light; walls darken to the edge)
        holes_alpha = np.zeros((s, s), _F32)
        holes_belt = np.zeros((s, s), _F32)  # coverage x brightness of the belt seen through
        hr, bw = self.hole_radius, self.bevel_width
        reach = hr + bw + 2.0
        for hx, hy in self.drilled_holes():
            win = (
                slice(max(0, int(hy - reach)), min(s, int(hy + reach) + 2)),
                slice(max(0, int(hx - reach)), min(s, int(hx + reach) + 2)),
            )
            wx, wy = xx[win], yy[win]
            d = _dist(wx, wy, hx, hy)
            height[win] -= _F32(0.035 * rad) * np.clip((hr + bw - d) * _F32(1.0 / bw), 0, 1) ** 2
            a = np.clip(hr - d + 0.5, 0.0, 1.0)
            wall = 1.0 - 0.5 * _smoothstep(0.45 * hr, hr, d)
            floor = _disk(wx, wy, hx - 0.8 * hr * ux, hy - 0.8 * hr * uy, hr)
            holes_alpha[win] += a
            holes_belt[win] += a * (0.25 + 0.45 * floor * wall) * wall

        # Lambert + Blinn-Phong on the height field's normals (-gx, -gy, 1)
        gy, gx = np.gradient(height)
        inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
        ndotl = np.clip((lz - gx * lx - gy * ly) * inv, 0.0, 1.0)
        hx_, hy_, hz_ = lx, ly, lz + 1.0
        hn = math.sqrt(hx_ * hx_ + hy_ * hy_ + hz_ * hz_)
        ndoth = np.clip((hz_ - gx * hx_ - gy * hy_) * (inv * _F32(1.0 / hn)), 0.0, 1.0)
        glint = ndoth
        for _ in range(6):  # ndoth ** 64, by squaring (pow is ten times slower)
            glint = glint * glint
        # broad soft highlight on the face, offset towards the light
        bx, by = dx - _F32(0.35 * rad * ux), dy - _F32(0.35 * rad * uy)
        blob = np.exp((bx * bx + by * by) * _F32(-1.0 / (2 * (0.3 * rad) ** 2)))
        spec = _F32(0.45 * 255) * glint + _F32(0.09 * 255) * blob
        shade = 0.30 + 0.80 * ndotl

        # drop shadow on the belt, cast away from the light (analytic soft edge, no blur)
        shift = self.shadow_shift
        sx, sy = dx - _F32(shift[0]), dy - _F32(shift[1])
        shadow = _smoothstep(1.09 * rad, 0.95 * rad, np.sqrt(sx * sx + sy * sy))
        if self.shadow_relief is not None:
            shadow *= self.shadow_relief

        # frame-wide light fall-off towards the light, vignetting and exposure, folded into the
        # per-pixel weights so the three-channel arithmetic stays short
        cxf = (xx - _F32(s / 2.0)) * _F32(2.0 / s)
        cyf = (yy - _F32(s / 2.0)) * _F32(2.0 / s)
        light = (1.0 + 0.08 * (cxf * _F32(ux) + cyf * _F32(uy))) * (
            1.0 - 0.11 * (cxf * cxf + cyf * cyf)
        )
        light *= _F32(self.gain)

        a_button = self.button_alpha
        a_plastic = a_button * (1.0 - np.clip(holes_alpha, 0.0, 1.0))
        w_belt = ((1.0 - a_button) + a_button * holes_belt) * (1.0 - 0.5 * shadow) * light
        w_plastic = a_plastic * light
        img = self.belt * _planes(w_belt)
        img += self.albedo * _planes(shade * w_plastic)
        img += _planes(spec * w_plastic)

        for alpha, colour in self.overlays:
            if isinstance(colour, float):
                img *= _planes(1.0 - alpha * _F32(1.0 - colour))
            else:
                img = img * _planes(1.0 - alpha) + _tinted(alpha * light, colour)

        img = cv2.GaussianBlur(img, (3, 3), 0.6)
        img += self.noise
        return img


# --------------------------------------------------------------------------------------------
# defects: each edits the scene and returns its coverage (float S x S, > 0 where it acts)


def _scratch(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    rad, u = scene.radius, scene.unit
    centre = np.array([scene.cx, scene.cy]) + rng.uniform(-0.3, 0.3, 2) * rad
    theta = rng.uniform(0, math.pi)
    direction = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    length = rng.uniform(0.8, 1.3) * rad
    bow = rng.uniform(-0.06, 0.06) * length
    t = np.linspace(-0.5, 0.5, 24)
    pts = centre + np.outer(t * length, direction) + np.outer((1 - 4 * t * t) * bow, normal)
    # keep it on the part: clip the polyline to 0.93 R from the centre
    keep = np.hypot(pts[:, 0] - scene.cx, pts[:, 1] - scene.cy) < 0.93 * rad
    pts = pts[keep]
    if len(pts) < 4:  # an unlucky placement at the rim: fall back to a chord through the centre
        pts = np.array([scene.cx, scene.cy]) + np.outer(t * 0.8 * rad, direction)
    cover = _polyline(scene.size, pts, max(2, round(2 * u)))
    # taper at both ends (a stylus digs in and lifts off)
    xx, yy = _grid(scene.size)
    p0, p1 = pts[0], pts[-1]
    span = p1 - p0
    along = ((xx - p0[0]) * span[0] + (yy - p0[1]) * span[1]) / float(span @ span)
    cover *= 0.35 + 0.65 * _smoothstep(0.0, 0.2, along) * _smoothstep(1.0, 0.8, along)
    cover *= scene.button_alpha
    if rng.random() < 0.5:  # stress-whitened scratch
        scene.albedo = scene.albedo * _planes(1.0 - 0.75 * cover) + _planes(235.0 * 0.75 * cover)
    else:  # dark groove
        scene.albedo = scene.albedo * _planes(1.0 - 0.6 * cover)
    return cover


def _crack_path(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, step: float
) -> np.ndarray:
    """A crack's centre line: gently bending, with a fine zigzag across it (N x 2 pixels)."""
    n = max(3, int(length / step))
    headings = heading + np.cumsum(rng.normal(0.0, math.radians(9), n))
    steps = step * np.stack([np.cos(headings), np.sin(headings)], 1)
    pts = np.vstack([start, start + np.cumsum(steps, 0)])
    across = np.stack([-np.sin(headings), np.cos(headings)], 1)
    jag = rng.normal(0.0, 0.35 * step, n)
    pts[1:] += across * jag[:, None]
    return pts


def _tapered_polyline(size: int, pts: np.ndarray, thickness: int, tip: float) -> np.ndarray:
    """Polyline coverage that fades to `tip` (0..1) over the last 40 % of its length."""
    canvas = np.zeros((size, size), np.uint8)
    n = len(pts) - 1
    for i in range(n):
        t = (i + 0.5) / n
        level = 1.0 if t < 0.6 else 1.0 - (1.0 - tip) * (t - 0.6) / 0.4
        seg = _fixed(pts[i : i + 2])
        cv2.polylines(canvas, [seg], False, int(round(255 * level)), thickness, cv2.LINE_AA, 4)
    return canvas.astype(_F32) / 255.0


def _crack(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    rad, u, s = scene.radius, scene.unit, scene.size
    phi = rng.uniform(0, 2 * math.pi)
    start = np.array([scene.cx, scene.cy]) + 0.995 * rad * np.array([math.cos(phi), math.sin(phi)])
    heading = phi + math.pi + rng.uniform(-0.4, 0.4)
    main = _crack_path(rng, start, heading, rng.uniform(0.45, 0.7) * rad, 2.5 * u)
    thickness = max(2, round(2 * u))
    dark = _tapered_polyline(s, main, thickness, 0.5)
    for _ in range(int(rng.integers(1, 3))):
        at = int(rng.integers(len(main) // 4, 3 * len(main) // 4))
        side = 1.0 if rng.random() < 0.5 else -1.0
        branch_heading = heading + side * rng.uniform(0.4, 0.9)
        branch = _crack_path(rng, main[at], branch_heading, rng.uniform(0.12, 0.25) * rad, 2.5 * u)
        dark = np.maximum(dark, 0.85 * _tapered_polyline(s, branch, thickness, 0.4))
    # the fracture lip on the lit side catches a little light
    lx, ly = float(scene.light[0]), float(scene.light[1])
    shift = np.array([lx, ly]) / math.hypot(lx, ly) * 1.5 * u
    lip = _polyline(s, main + shift, 1) * (1.0 - dark)
    dark *= scene.button_alpha
    lip *= scene.button_alpha
    scene.albedo = scene.albedo * _planes((1.0 - 0.78 * dark) * (1.0 + 0.35 * lip))
    return np.maximum(dark, lip)


def _chipped_rim(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    rad, s = scene.radius, scene.size
    phi = rng.uniform(0, 2 * math.pi)
    bite_r = rng.uniform(0.15, 0.22) * rad
    centre = np.array([scene.cx, scene.cy]) + (rad + 0.25 * bite_r) * np.array(
        [math.cos(phi), math.sin(phi)]
    )
    n = 18
    angles = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(-0.12, 0.12, n)
    radii = bite_r * rng.uniform(0.75, 1.2, n)
    poly = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    canvas = np.zeros((s, s), np.uint8)
    cv2.fillPoly(canvas, [_fixed(poly)], 255, cv2.LINE_AA, 4)
    bite = canvas.astype(_F32) / 255.0 * scene.button_alpha
    # fracture surface: a rough, stress-whitened band along the new edge
    width = max(2, round(3 * scene.unit))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    grown = cv2.dilate(canvas, kernel).astype(_F32) / 255.0
    band = np.clip(grown - bite, 0.0, 1.0) * scene.button_alpha
    rough = 0.55 + 0.45 * rng.random((s, s), dtype=_F32)
    whiten = band * rough
    scene.albedo = scene.albedo * _planes(1.0 - 0.55 * whiten) + _planes(215.0 * 0.55 * whiten)
    inside = bite > 0
    scene.button_alpha = scene.button_alpha * (1.0 - canvas.astype(_F32) / 255.0)
    # the belt inside the bite is lit where the missing piece would have cast its shadow; only
    # corrected inside the bite, so the change stays within the mask
    gap = np.zeros((s, s), np.uint8)
    cv2.fillPoly(gap, [_fixed(poly + scene.shadow_shift)], 255, cv2.LINE_AA, 4)
    gap_soft = cv2.blur(gap, (7, 7)).astype(_F32) / 255.0
    scene.shadow_relief = 1.0 - gap_soft * inside
    return np.maximum(bite, band)


def _missing_hole(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(len(scene.hole_centres)))
    scene.skip_hole = k
    hx, hy = scene.hole_centres[k]
    xx, yy = _grid(scene.size)
    # the hole and its countersink (+1 px for the shading gradient) are what changes
    return _disk(xx, yy, hx, hy, scene.hole_radius + scene.bevel_width + 1.0)


_STAIN_COLOURS = (
    (40.0, 80.0, 135.0),  # rust brown
    (45.0, 165.0, 200.0),  # yellowed grease
    (38.0, 40.0, 44.0),  # dark oil
    (200.0, 208.0, 212.0),  # dried white residue (glue, detergent)
)


def _stain(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    rad, s = scene.radius, scene.size
    xx, yy = _grid(s)
    offset = rng.uniform(0, 0.5) * rad
    phi = rng.uniform(0, 2 * math.pi)
    sx, sy = scene.cx + offset * math.cos(phi), scene.cy + offset * math.sin(phi)
    size = rng.uniform(0.2, 0.32) * rad
    elong = rng.uniform(0.7, 1.3)
    rot = rng.uniform(0, math.pi)
    dx, dy = xx - _F32(sx), yy - _F32(sy)
    u = (dx * _F32(math.cos(rot)) + dy * _F32(math.sin(rot))) / _F32(size * elong)
    v = (-dx * _F32(math.sin(rot)) + dy * _F32(math.cos(rot))) / _F32(size / elong)
    # irregular outline: a radial field perturbed by smooth noise on the stain's own scale
    coarse = _low_noise(rng, max(4, int(round(s / size))), s)
    fine = _low_noise(rng, max(4, int(round(s / (0.35 * size)))), s)
    f = 1.0 - (u * u + v * v) + 0.3 * coarse + 0.12 * fine
    ramp = _smoothstep(0.0, 0.4, f)
    opacity = rng.uniform(0.55, 0.8)
    # dried edge: a little denser at the rim of the blotch
    alpha = opacity * ramp * (0.8 + 0.35 * np.exp(-np.maximum(f, 0.0) / 0.15)) * scene.button_alpha
    colour = np.asarray(_STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))], _F32)
    alpha = np.clip(alpha, 0.0, 1.0)
    # the stain keeps the plastic's grain (it soaks into the surface, it is not a paint layer)
    scene.albedo = scene.albedo * _planes(1.0 - alpha) + _tinted(alpha * scene.texture, colour)
    return alpha


def _thread(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    rad, u, s = scene.radius, scene.unit, scene.size
    c = np.array([scene.cx, scene.cy])
    phi = rng.uniform(0, 2 * math.pi)
    across = phi + math.pi + rng.uniform(-0.7, 0.7)
    p0 = c + rng.uniform(0.7, 1.25) * rad * np.array([math.cos(phi), math.sin(phi)])
    p3 = c + rng.uniform(0.6, 1.25) * rad * np.array([math.cos(across), math.sin(across)])
    p1 = c + rng.uniform(-0.6, 0.6, 2) * rad
    p2 = c + rng.uniform(-0.6, 0.6, 2) * rad
    t = np.linspace(0, 1, 90)[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    # small kinks of a limp fibre
    tangent = np.gradient(pts, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    wiggle = 1.5 * u * np.sin(np.linspace(0, rng.uniform(6, 14), len(pts)) + rng.uniform(0, 6))
    pts = pts + normal * wiggle[:, None]
    lx, ly = float(scene.light[0]), float(scene.light[1])
    away = -np.array([lx, ly]) / math.hypot(lx, ly)
    thickness = max(2, round(2 * u))
    body = _polyline(s, pts, thickness)
    shadow = _polyline(s, pts + away * 2.0 * u, thickness) * (1.0 - body)
    colour = np.asarray(rng.choice([[30, 28, 30], [22, 22, 60], [50, 30, 28]]), _F32)
    # a twisted fibre shows a faint sheen along its lit side
    sheen = 0.5 * _polyline(s, pts - away * 0.6 * u, 1) * body
    scene.overlays.append((shadow, 0.6))
    scene.overlays.append((body, colour))
    scene.overlays.append((sheen, colour * 1.8 + 30.0))
    return np.maximum(body, shadow)


_DEFECT_RENDERERS: dict[str, Callable[[_Scene, np.random.Generator], np.ndarray]] = {
    "scratch": _scratch,
    "crack": _crack,
    "chipped_rim": _chipped_rim,
    "missing_hole": _missing_hole,
    "stain": _stain,
    "thread": _thread,
}
assert tuple(_DEFECT_RENDERERS) == DEFECTS


# --------------------------------------------------------------------------------------------
# public API


def render_part(
    seed: int,
    index: int,
    defect: str | None = None,
    style: ButtonStyle = ButtonStyle(),
    split: str = "test",
) -> tuple[np.ndarray, np.ndarray]:
    """Photograph part `index` of the product, optionally with a defect.

    Returns (image, mask): image uint8 size x size x 3 BGR; mask uint8 size x size, 255 where
    the defect changed pixels (its coverage dilated by the 1 px blur footprint), all 0 for a good
    part. For the same (seed, split, index, style) the good render and every defect render share
    pose, lighting, texture and sensor noise, and differ only inside the mask.

    `split` ("train" or "test") selects an independent random stream, so training and test parts
    never coincide. seed and index must be non-negative.
    """
    if defect is not None and defect not in DEFECTS:
        raise ValueError(
            f"unknown defect {defect!r}; allowed: {', '.join(DEFECTS)} (or None for a good part)"
        )
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    split_code = _SPLIT_CODES[split]
    scene = _Scene.sample(np.random.default_rng([seed, split_code, 0, index]), style)
    mask: np.ndarray = np.zeros((style.size, style.size), np.uint8)
    if defect is not None:
        defect_rng = np.random.default_rng([seed, split_code, 1 + DEFECTS.index(defect), index])
        coverage = _DEFECT_RENDERERS[defect](scene, defect_rng)
        mask[coverage > 0] = 255
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    image = np.clip(np.rint(scene.compose()), 0, 255).astype(np.uint8)
    return image, mask


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def write_dataset(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train_good: int = 200,
    n_test_good: int = 40,
    n_test_per_defect: int = 10,
    style: ButtonStyle = ButtonStyle(),
) -> dict[str, int]:
    """Write the product as an MVTec AD tree of PNGs and return the file count per folder.

    Layout: train/good/000.png, test/good/000.png, test/<defect>/000.png and
    ground_truth/<defect>/000_mask.png (0/255). Train good parts use the "train" RNG split and
    everything under test/ the "test" split. Defective part NNN of defect k is part index
    (k + 1) * DEFECT_INDEX_STRIDE + NNN, so defective parts are not copies of test/good parts.

    Re-running with the same arguments rewrites identical bytes. Raises FileExistsError if a
    target folder holds PNGs this call would not write (e.g. from a run with larger counts), so
    a data set never silently mixes two runs.
    """
    out_dir = Path(out_dir)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for name, n in (
        ("n_train_good", n_train_good),
        ("n_test_good", n_test_good),
        ("n_test_per_defect", n_test_per_defect),
    ):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    width = max(3, len(str(max(n_train_good, n_test_good, n_test_per_defect, 1) - 1)))

    plan: dict[str, list[str]] = {
        "train/good": [f"{i:0{width}d}.png" for i in range(n_train_good)],
        "test/good": [f"{i:0{width}d}.png" for i in range(n_test_good)],
    }
    for d in DEFECTS:
        plan[f"test/{d}"] = [f"{i:0{width}d}.png" for i in range(n_test_per_defect)]
        plan[f"ground_truth/{d}"] = [f"{i:0{width}d}_mask.png" for i in range(n_test_per_defect)]
    for folder, names in plan.items():
        existing = out_dir / folder
        if existing.is_dir():
            stale = sorted({p.name for p in existing.glob("*.png")} - set(names))
            if stale:
                raise FileExistsError(
                    f"{existing} already holds {len(stale)} PNG(s) this run would not write "
                    f"(e.g. {stale[0]}); remove the folder or write to a new one"
                )
    for folder in plan:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)

    for i, name in enumerate(plan["train/good"]):
        _write_png(out_dir / "train/good" / name, render_part(seed, i, None, style, "train")[0])
    for i, name in enumerate(plan["test/good"]):
        _write_png(out_dir / "test/good" / name, render_part(seed, i, None, style, "test")[0])
    for k, d in enumerate(DEFECTS):
        for i, name in enumerate(plan[f"test/{d}"]):
            image, mask = render_part(seed, (k + 1) * DEFECT_INDEX_STRIDE + i, d, style, "test")
            _write_png(out_dir / f"test/{d}" / name, image)
            _write_png(out_dir / f"ground_truth/{d}" / plan[f"ground_truth/{d}"][i], mask)
    return {folder: len(names) for folder, names in plan.items()}


def main(argv: list[str] | None = None) -> int:
    """CLI: write a synthetic button data set in MVTec AD layout; prints the counts as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m inspectd.synthetic",
        description="Write a deterministic synthetic button data set (MVTec AD layout, PNG).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (>= 0)")
    parser.add_argument("--train-good", type=int, default=200, help="good training images")
    parser.add_argument("--test-good", type=int, default=40, help="good test images")
    parser.add_argument("--per-defect", type=int, default=10, help="test images per defect type")
    parser.add_argument("--holes", type=int, choices=(2, 4), default=4, help="holes per button")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (>= 64)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    try:
        style = ButtonStyle(size=args.size, holes=args.holes)
        summary = write_dataset(
            args.out,
            seed=args.seed,
            n_train_good=args.train_good,
            n_test_good=args.test_good,
            n_test_per_defect=args.per_defect,
            style=style,
        )
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(json.dumps({"out": str(args.out), "seed": args.seed, "counts": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
