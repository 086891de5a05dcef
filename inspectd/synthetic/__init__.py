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

from inspectd.synthetic.dataset import render_part, write_dataset, write_png
from inspectd.synthetic.style import DEFECT_INDEX_STRIDE, DEFECTS, SPLITS, ButtonStyle

__all__ = [
    "DEFECTS",
    "DEFECT_INDEX_STRIDE",
    "SPLITS",
    "ButtonStyle",
    "render_part",
    "write_dataset",
    "write_png",
]
