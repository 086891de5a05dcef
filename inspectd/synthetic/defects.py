"""The six defects: each edits the scene and returns its coverage (> 0 where it acts)."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from inspectd.synthetic.drawing import (
    F32,
    disk,
    fixed,
    grid,
    low_noise,
    planes,
    polyline,
    smoothstep,
    tinted,
)
from inspectd.synthetic.scene import Scene
from inspectd.synthetic.style import DEFECTS


def _scratch(scene: Scene, rng: np.random.Generator) -> np.ndarray:
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
    cover = polyline(scene.size, pts, max(2, round(2 * u)))
    # taper at both ends (a stylus digs in and lifts off)
    xx, yy = grid(scene.size)
    p0, p1 = pts[0], pts[-1]
    span = p1 - p0
    along = ((xx - p0[0]) * span[0] + (yy - p0[1]) * span[1]) / float(span @ span)
    cover *= 0.35 + 0.65 * smoothstep(0.0, 0.2, along) * smoothstep(1.0, 0.8, along)
    cover *= scene.button_alpha
    if rng.random() < 0.5:  # stress-whitened scratch
        scene.albedo = scene.albedo * planes(1.0 - 0.75 * cover) + planes(235.0 * 0.75 * cover)
    else:  # dark groove
        scene.albedo = scene.albedo * planes(1.0 - 0.6 * cover)
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
        seg = fixed(pts[i : i + 2])
        cv2.polylines(canvas, [seg], False, int(round(255 * level)), thickness, cv2.LINE_AA, 4)
    return canvas.astype(F32) / 255.0


def _crack(scene: Scene, rng: np.random.Generator) -> np.ndarray:
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
    lip = polyline(s, main + shift, 1) * (1.0 - dark)
    dark *= scene.button_alpha
    lip *= scene.button_alpha
    scene.albedo = scene.albedo * planes((1.0 - 0.78 * dark) * (1.0 + 0.35 * lip))
    return np.maximum(dark, lip)


def _chipped_rim(scene: Scene, rng: np.random.Generator) -> np.ndarray:
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
    cv2.fillPoly(canvas, [fixed(poly)], 255, cv2.LINE_AA, 4)
    bite = canvas.astype(F32) / 255.0 * scene.button_alpha
    # fracture surface: a rough, stress-whitened band along the new edge
    width = max(2, round(3 * scene.unit))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    grown = cv2.dilate(canvas, kernel).astype(F32) / 255.0
    band = np.clip(grown - bite, 0.0, 1.0) * scene.button_alpha
    rough = 0.55 + 0.45 * rng.random((s, s), dtype=F32)
    whiten = band * rough
    scene.albedo = scene.albedo * planes(1.0 - 0.55 * whiten) + planes(215.0 * 0.55 * whiten)
    inside = bite > 0
    scene.button_alpha = scene.button_alpha * (1.0 - canvas.astype(F32) / 255.0)
    # the belt inside the bite is lit where the missing piece would have cast its shadow; only
    # corrected inside the bite, so the change stays within the mask
    gap = np.zeros((s, s), np.uint8)
    cv2.fillPoly(gap, [fixed(poly + scene.shadow_shift)], 255, cv2.LINE_AA, 4)
    gap_soft = cv2.blur(gap, (7, 7)).astype(F32) / 255.0
    scene.shadow_relief = 1.0 - gap_soft * inside
    return np.maximum(bite, band)


def _missing_hole(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(len(scene.hole_centres)))
    scene.skip_hole = k
    hx, hy = scene.hole_centres[k]
    xx, yy = grid(scene.size)
    # the hole and its countersink (+1 px for the shading gradient) are what changes
    return disk(xx, yy, hx, hy, scene.hole_radius + scene.bevel_width + 1.0)


_STAIN_COLOURS = (
    (40.0, 80.0, 135.0),  # rust brown
    (45.0, 165.0, 200.0),  # yellowed grease
    (38.0, 40.0, 44.0),  # dark oil
    (200.0, 208.0, 212.0),  # dried white residue (glue, detergent)
)


def _stain(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    rad, s = scene.radius, scene.size
    xx, yy = grid(s)
    offset = rng.uniform(0, 0.5) * rad
    phi = rng.uniform(0, 2 * math.pi)
    sx, sy = scene.cx + offset * math.cos(phi), scene.cy + offset * math.sin(phi)
    size = rng.uniform(0.2, 0.32) * rad
    elong = rng.uniform(0.7, 1.3)
    rot = rng.uniform(0, math.pi)
    dx, dy = xx - F32(sx), yy - F32(sy)
    u = (dx * F32(math.cos(rot)) + dy * F32(math.sin(rot))) / F32(size * elong)
    v = (-dx * F32(math.sin(rot)) + dy * F32(math.cos(rot))) / F32(size / elong)
    # irregular outline: a radial field perturbed by smooth noise on the stain's own scale
    coarse = low_noise(rng, max(4, int(round(s / size))), s)
    fine = low_noise(rng, max(4, int(round(s / (0.35 * size)))), s)
    f = 1.0 - (u * u + v * v) + 0.3 * coarse + 0.12 * fine
    ramp = smoothstep(0.0, 0.4, f)
    opacity = rng.uniform(0.55, 0.8)
    # dried edge: a little denser at the rim of the blotch
    alpha = opacity * ramp * (0.8 + 0.35 * np.exp(-np.maximum(f, 0.0) / 0.15)) * scene.button_alpha
    colour = np.asarray(_STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))], F32)
    alpha = np.clip(alpha, 0.0, 1.0)
    # the stain keeps the plastic's grain (it soaks into the surface, it is not a paint layer)
    scene.albedo = scene.albedo * planes(1.0 - alpha) + tinted(alpha * scene.texture, colour)
    return alpha


def _thread(scene: Scene, rng: np.random.Generator) -> np.ndarray:
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
    body = polyline(s, pts, thickness)
    shadow = polyline(s, pts + away * 2.0 * u, thickness) * (1.0 - body)
    colour = np.asarray(rng.choice([[30, 28, 30], [22, 22, 60], [50, 30, 28]]), F32)
    # a twisted fibre shows a faint sheen along its lit side
    sheen = 0.5 * polyline(s, pts - away * 0.6 * u, 1) * body
    scene.overlays.append((shadow, 0.6))
    scene.overlays.append((body, colour))
    scene.overlays.append((sheen, colour * 1.8 + 30.0))
    return np.maximum(body, shadow)


DEFECT_RENDERERS: dict[str, Callable[[Scene, np.random.Generator], np.ndarray]] = {
    "scratch": _scratch,
    "crack": _crack,
    "chipped_rim": _chipped_rim,
    "missing_hole": _missing_hole,
    "stain": _stain,
    "thread": _thread,
}
assert tuple(DEFECT_RENDERERS) == DEFECTS
