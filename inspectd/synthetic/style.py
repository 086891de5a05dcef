"""The product's description and the names of its defects and splits."""

from __future__ import annotations

from dataclasses import dataclass

DEFECTS: tuple[str, ...] = ("scratch", "crack", "chipped_rim", "missing_hole", "stain", "thread")
"""Defect type names; they are also the MVTec folder names under test/ and ground_truth/."""

SPLITS: tuple[str, ...] = ("train", "test")
"""RNG splits: train good parts and test parts come from disjoint random streams."""

DEFECT_INDEX_STRIDE = 1_000_000
"""`write_dataset` renders test/<defect>/NNN.png from part index (k + 1) * stride + NNN, where
k = DEFECTS.index(defect), so defective parts are different parts from those in test/good."""

SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}


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
