"""One part in front of the camera as editable layers; defects edit it before `compose`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from inspectd.synthetic.drawing import (
    F32,
    disk,
    dist,
    grid,
    low_noise,
    planes,
    smoothstep,
    tinted,
    uniform_noise,
)
from inspectd.synthetic.style import ButtonStyle


@dataclass
class Scene:
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
    def sample(cls, rng: np.random.Generator, style: ButtonStyle) -> Scene:
        """Draw one good part. The order of draws is fixed and independent of any defect."""
        s = style.size
        unit = s / 256.0
        xx, yy = grid(s)

        # pose and lighting (scalars first)
        cx = s / 2.0 + rng.uniform(-1, 1) * style.translate * s
        cy = s / 2.0 + rng.uniform(-1, 1) * style.translate * s
        radius = style.diameter * s / 2.0 * (1.0 + rng.uniform(-1, 1) * style.scale)
        nominal = 45.0 if style.holes == 4 else 0.0
        angle = math.radians(nominal + rng.uniform(-1, 1) * style.rotation_deg)
        azimuth = math.radians(225.0 + rng.uniform(-1, 1) * style.light_jitter_deg)
        elevation = math.radians(50.0 + rng.uniform(-4, 4))
        gain = 1.0 + rng.uniform(-1, 1) * style.brightness
        colour = np.asarray(style.colour, F32) * (
            1.0 + rng.uniform(-1, 1, 3).astype(F32) * style.colour_jitter
        )
        belt_grey = np.asarray([96.0, 97.0, 95.0], F32) * (1.0 + F32(rng.uniform(-0.04, 0.04)))
        light = np.asarray(
            [
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation),
            ],
            F32,
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
        fine = cv2.GaussianBlur(uniform_noise(rng, (s, s)), (3, 3), 0.8)
        dirt = low_noise(rng, 7, s)
        streak = cv2.GaussianBlur(uniform_noise(rng, (s, 1)), (1, 5), 1.2)
        phase = rng.uniform(0, 2 * math.pi, 2)
        period = 5.0 * unit
        axis = np.arange(s, dtype=F32) * F32(2 * math.pi / period)
        weave = np.sin(axis + F32(phase[1]))[:, None] * np.sin(axis + F32(phase[0]))[None, :]
        belt_tex = 5.0 * fine + 4.0 * dirt + 3.0 * streak + 3.5 * weave
        belt = cv2.merge([belt_tex + g for g in belt_grey])

        # plastic: fine grain, mottling and faint concentric turning marks
        grain = cv2.GaussianBlur(uniform_noise(rng, (s, s)), (3, 3), 0.7)
        mottle = low_noise(rng, 5, s)
        ring_phase = F32(rng.uniform(0, 2 * math.pi))
        r = dist(xx, yy, cx, cy)
        rings = np.sin(r * F32(2 * math.pi / (4.0 * unit)) + ring_phase + 1.5 * mottle)
        tex = 0.022 * grain + 0.02 * mottle + 0.012 * rings
        texture = 1.0 + tex
        albedo = tinted(texture, colour)

        noise = uniform_noise(rng, (s, s, 3))
        noise *= F32(1.6)

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
        xx, yy = grid(s)
        dx, dy = xx - F32(self.cx), yy - F32(self.cy)
        rn = np.sqrt(dx * dx + dy * dy) * F32(1.0 / rad)
        lx, ly, lz = (float(v) for v in self.light)
        lxy = math.hypot(lx, ly)
        ux, uy = lx / lxy, ly / lxy  # unit direction towards the light in the image plane

        # height field in pixels: concave face, raised rim, rounded outer edge
        rim = (rn - F32(0.875)) * F32(1.0 / 0.06)
        height = F32(rad) * (
            F32(0.035) * np.minimum(rn, 1.0) ** 2 + F32(0.06) * np.exp(-(rim * rim))
        )
        height *= smoothstep(1.0, 0.93, rn)

        # holes, each worked on in a small window: countersink in the height field, coverage,
        # and what is seen through them (the belt below, in shadow except for a crescent of
        # light that falls through on the side away from the light; walls darken to the edge)
        holes_alpha = np.zeros((s, s), F32)
        holes_belt = np.zeros((s, s), F32)  # coverage x brightness of the belt seen through
        hr, bw = self.hole_radius, self.bevel_width
        reach = hr + bw + 2.0
        for hx, hy in self.drilled_holes():
            win = (
                slice(max(0, int(hy - reach)), min(s, int(hy + reach) + 2)),
                slice(max(0, int(hx - reach)), min(s, int(hx + reach) + 2)),
            )
            wx, wy = xx[win], yy[win]
            d = dist(wx, wy, hx, hy)
            height[win] -= F32(0.035 * rad) * np.clip((hr + bw - d) * F32(1.0 / bw), 0, 1) ** 2
            a = np.clip(hr - d + 0.5, 0.0, 1.0)
            wall = 1.0 - 0.5 * smoothstep(0.45 * hr, hr, d)
            floor = disk(wx, wy, hx - 0.8 * hr * ux, hy - 0.8 * hr * uy, hr)
            holes_alpha[win] += a
            holes_belt[win] += a * (0.25 + 0.45 * floor * wall) * wall

        # Lambert + Blinn-Phong on the height field's normals (-gx, -gy, 1)
        gy, gx = np.gradient(height)
        inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
        ndotl = np.clip((lz - gx * lx - gy * ly) * inv, 0.0, 1.0)
        hx_, hy_, hz_ = lx, ly, lz + 1.0
        hn = math.sqrt(hx_ * hx_ + hy_ * hy_ + hz_ * hz_)
        ndoth = np.clip((hz_ - gx * hx_ - gy * hy_) * (inv * F32(1.0 / hn)), 0.0, 1.0)
        glint = ndoth
        for _ in range(6):  # ndoth ** 64, by squaring (pow is ten times slower)
            glint = glint * glint
        # broad soft highlight on the face, offset towards the light
        bx, by = dx - F32(0.35 * rad * ux), dy - F32(0.35 * rad * uy)
        blob = np.exp((bx * bx + by * by) * F32(-1.0 / (2 * (0.3 * rad) ** 2)))
        spec = F32(0.45 * 255) * glint + F32(0.09 * 255) * blob
        shade = 0.30 + 0.80 * ndotl

        # drop shadow on the belt, cast away from the light (analytic soft edge, no blur)
        shift = self.shadow_shift
        sx, sy = dx - F32(shift[0]), dy - F32(shift[1])
        shadow = smoothstep(1.09 * rad, 0.95 * rad, np.sqrt(sx * sx + sy * sy))
        if self.shadow_relief is not None:
            shadow *= self.shadow_relief

        # frame-wide light fall-off towards the light, vignetting and exposure, folded into the
        # per-pixel weights so the three-channel arithmetic stays short
        cxf = (xx - F32(s / 2.0)) * F32(2.0 / s)
        cyf = (yy - F32(s / 2.0)) * F32(2.0 / s)
        light = (1.0 + 0.08 * (cxf * F32(ux) + cyf * F32(uy))) * (
            1.0 - 0.11 * (cxf * cxf + cyf * cyf)
        )
        light *= F32(self.gain)

        a_button = self.button_alpha
        a_plastic = a_button * (1.0 - np.clip(holes_alpha, 0.0, 1.0))
        w_belt = ((1.0 - a_button) + a_button * holes_belt) * (1.0 - 0.5 * shadow) * light
        w_plastic = a_plastic * light
        img = self.belt * planes(w_belt)
        img += self.albedo * planes(shade * w_plastic)
        img += planes(spec * w_plastic)

        for alpha, colour in self.overlays:
            if isinstance(colour, float):
                img *= planes(1.0 - alpha * F32(1.0 - colour))
            else:
                img = img * planes(1.0 - alpha) + tinted(alpha * light, colour)

        img = cv2.GaussianBlur(img, (3, 3), 0.6)
        img += self.noise
        return img
