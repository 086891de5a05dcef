"""Pixel format conversions (inspectd.capture.pixels) with known patterns and hand-packed bytes."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from inspectd.capture.pixels import SUPPORTED, PixelFormatError, to_frame_image
from inspectd.config.camera import GenICamPixelFormat

RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR


def _scene() -> np.ndarray:
    """A 48x48 BGR scene: a red, a green and a blue patch side by side."""
    scene = np.zeros((48, 48, 3), np.uint8)
    scene[:, :16] = RED
    scene[:, 16:32] = GREEN
    scene[:, 32:] = BLUE
    return scene


# PFNC pattern name -> which channel (as an RGB letter) sits at (row%2, col%2)
_PATTERNS = {
    "BayerRG8": ("RG", "GB"),
    "BayerGR8": ("GR", "BG"),
    "BayerGB8": ("GB", "RG"),
    "BayerBG8": ("BG", "GR"),
}
_BGR_INDEX = {"B": 0, "G": 1, "R": 2}


def _mosaic(scene: np.ndarray, pattern: str) -> np.ndarray:
    rows = _PATTERNS[pattern]
    out = np.zeros(scene.shape[:2], np.uint8)
    for r in range(2):
        for c in range(2):
            out[r::2, c::2] = scene[r::2, c::2, _BGR_INDEX[rows[r][c]]]
    return out


def test_config_lists_the_supported_formats():
    assert set(typing.get_args(GenICamPixelFormat)) == set(SUPPORTED)


@pytest.mark.parametrize("pattern", sorted(_PATTERNS))
def test_bayer_demosaics_to_the_right_colours(pattern):
    scene = _scene()
    img = to_frame_image(_mosaic(scene, pattern).tobytes(), 48, 48, pattern)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    for x0, colour in ((0, RED), (16, GREEN), (32, BLUE)):
        patch = img[8:40, x0 + 4 : x0 + 12].reshape(-1, 3)  # away from the patch edges
        assert np.abs(patch.astype(int) - colour).max() <= 2, (pattern, colour, patch[:2])


def test_a_wrong_bayer_mapping_would_be_caught():
    # BayerRG data read as BayerBG swaps red and blue: the test above can tell them apart
    img = to_frame_image(_mosaic(_scene(), "BayerRG8").tobytes(), 48, 48, "BayerBG8")
    assert tuple(img[24, 8]) != RED


def test_rgb8_and_bgr8():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)  # R, G, B pixels
    img = to_frame_image(rgb.tobytes(), 3, 1, "RGB8")
    assert [tuple(p) for p in img[0]] == [RED, GREEN, BLUE]
    img = to_frame_image(rgb.tobytes(), 3, 1, "BGR8")
    assert [tuple(p) for p in img[0]] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_mono8_keeps_values_and_shape():
    data = np.arange(12, dtype=np.uint8)
    img = to_frame_image(data, 4, 3, "Mono8")
    assert img.shape == (3, 4) and img.dtype == np.uint8
    assert img[2, 3] == 11


@pytest.mark.parametrize(("fmt", "bits"), [("Mono10", 10), ("Mono12", 12), ("Mono16", 16)])
def test_unpacked_deep_mono_is_shifted_to_8_bit(fmt, bits):
    values = np.array([0, 1 << (bits - 8), (1 << bits) - 1, 3 << (bits - 8)], np.uint16)
    expected = [0, 1, 255, 3]
    assert to_frame_image(values, 2, 2, fmt).reshape(-1).tolist() == expected  # 16-bit values
    raw = values.astype("<u2").tobytes()  # raw little-endian bytes
    assert to_frame_image(raw, 2, 2, fmt).reshape(-1).tolist() == expected


def test_mono12p_lsb_first_packing():
    # pixels 0xABC, 0x123: byte0 = 0xBC (p0 low 8), byte1 = 0x3A (p1 low nibble | p0 high
    # nibble), byte2 = 0x12 (p1 high 8)
    raw = bytes([0xBC, 0x3A, 0x12])
    assert to_frame_image(raw, 2, 1, "Mono12p").tolist() == [[0xAB, 0x12]]


def test_mono12packed_gige_layout():
    # GigE Vision: byte0 = p0 high 8, byte1 = p1 low nibble << 4 | p0 low nibble, byte2 = p1 high 8
    raw = bytes([0xAB, 0x3C, 0x12])  # p0 = 0xABC, p1 = 0x123
    assert to_frame_image(raw, 2, 1, "Mono12Packed").tolist() == [[0xAB, 0x12]]
    # the same bytes read as Mono12p would give other pixels: the two layouts differ
    assert to_frame_image(raw, 2, 1, "Mono12p").tolist() != [[0xAB, 0x12]]


def test_mono10p_four_pixels_in_five_bytes():
    pixels = [0x3FF, 0x001, 0x2AA, 0x155]
    bits = sum(p << (10 * i) for i, p in enumerate(pixels))  # LSB-first bit stream
    raw = bits.to_bytes(5, "little")
    assert to_frame_image(raw, 4, 1, "Mono10p").tolist() == [[p >> 2 for p in pixels]]


def test_mono10packed_gige_layout():
    p0, p1 = 0x3FD, 0x106
    raw = bytes([p0 >> 2, (p0 & 3) | ((p1 & 3) << 4), p1 >> 2])
    assert to_frame_image(raw, 2, 1, "Mono10Packed").tolist() == [[p0 >> 2, p1 >> 2]]


def test_packed_formats_already_unpacked_by_harvesters():
    values = np.array([0xABC, 0x123], np.uint16)
    assert to_frame_image(values, 2, 1, "Mono12p").tolist() == [[0xAB, 0x12]]


def test_odd_pixel_count_packed():
    raw = bytes([0xBC, 0x0A])  # one Mono12p pixel in 1.5 bytes (rounded up to 2)
    assert to_frame_image(raw, 1, 1, "Mono12p").tolist() == [[0xAB]]


def test_unknown_format_names_the_supported_ones():
    with pytest.raises(PixelFormatError, match=r"'YUV422Packed'.*supported: Mono8.*BayerRG8"):
        to_frame_image(b"\0" * 8, 2, 2, "YUV422Packed")


def test_short_data_is_an_error():
    with pytest.raises(PixelFormatError, match="needs 12 values, the camera sent 4"):
        to_frame_image(b"\0" * 4, 2, 2, "RGB8")
