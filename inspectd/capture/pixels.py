"""Camera pixel formats (PFNC names, as GenICam cameras report them) to what the pipeline
takes: uint8 HxW (mono) or HxWx3 in OpenCV's BGR order.

`to_frame_image(data, width, height, pixel_format)` takes the pixels as the camera sent them:
either the raw bytes (uint8, packed formats still packed) or, for formats deeper than 8 bits,
the values already unpacked into a 16-bit container (harvesters hands those over unpacked).
Deeper formats are scaled to 8 bits by dropping the low bits (a shift, no rounding, no
stretching: what the camera's own 8-bit mode would give).

Bayer naming: PFNC names a pattern by its first row from the top-left pixel (BayerRG8 = rows
R G / G B); OpenCV names it by the second row's second and third pixel, so PFNC BayerRG is
OpenCV's BayerBG, GR is GB, GB is GR and BG is RG.

Packed layouts:
- PFNC "p" formats (Mono10p, Mono12p): one LSB-first bit stream, pixel after pixel with no
  gaps (Mono10p: 4 pixels in 5 bytes; Mono12p: 2 pixels in 3 bytes, byte 1's low nibble are
  pixel 0's high bits).
- GigE Vision "Packed" formats (Mono10Packed, Mono12Packed): 2 pixels in 3 bytes, byte 0 and
  byte 2 hold the high 8 bits of pixels 0 and 1, byte 1 their low bits (pixel 0 in the low
  nibble, pixel 1 in the high nibble).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["SUPPORTED", "PixelFormatError", "to_frame_image"]


class PixelFormatError(ValueError):
    """The data cannot be turned into an image: unknown format or wrong amount of data."""


# PFNC Bayer name -> OpenCV conversion code (see the module docstring).
_BAYER = {
    "BayerRG8": cv2.COLOR_BayerBG2BGR,
    "BayerGR8": cv2.COLOR_BayerGB2BGR,
    "BayerGB8": cv2.COLOR_BayerGR2BGR,
    "BayerBG8": cv2.COLOR_BayerRG2BGR,
}
_UNPACKED_BITS = {"Mono10": 10, "Mono12": 12, "Mono16": 16}
_PACKED_BITS = {"Mono10p": 10, "Mono12p": 12, "Mono10Packed": 10, "Mono12Packed": 12}

SUPPORTED: tuple[str, ...] = (
    "Mono8",
    *_UNPACKED_BITS,
    *_PACKED_BITS,
    *_BAYER,
    "RGB8",
    "BGR8",
)


def _need(data: np.ndarray, count: int, pixel_format: str, width: int, height: int) -> np.ndarray:
    flat = data.reshape(-1)
    if flat.size < count:
        raise PixelFormatError(
            f"{pixel_format} {width}x{height} needs {count} values, the camera sent {flat.size}"
        )
    return flat[:count]


def _groups(raw: np.ndarray, group: int, pixels_per_group: int, count: int) -> np.ndarray:
    """The bytes as rows of `group` bytes, zero-padded to whole groups."""
    size = -(-count // pixels_per_group) * group
    raw = raw[:size]
    if raw.size < size:
        raw = np.concatenate([raw, np.zeros(size - raw.size, dtype=np.uint8)])
    return raw.reshape(-1, group).astype(np.uint16)


def _unpack_pfnc(raw: np.ndarray, bits: int, count: int) -> np.ndarray:
    """PFNC 'p' packing: an LSB-first bit stream of `bits`-bit pixels."""
    if bits == 12:
        b = _groups(raw, 3, 2, count)
        out = np.empty(b.shape[0] * 2, dtype=np.uint16)
        out[0::2] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
        out[1::2] = (b[:, 1] >> 4) | (b[:, 2] << 4)
        return out[:count]
    if bits == 10:
        b = _groups(raw, 5, 4, count)
        out = np.empty(b.shape[0] * 4, dtype=np.uint16)
        out[0::4] = b[:, 0] | ((b[:, 1] & 0x03) << 8)
        out[1::4] = (b[:, 1] >> 2) | ((b[:, 2] & 0x0F) << 6)
        out[2::4] = (b[:, 2] >> 4) | ((b[:, 3] & 0x3F) << 4)
        out[3::4] = (b[:, 3] >> 6) | (b[:, 4] << 2)
        return out[:count]
    raise AssertionError(bits)


def _unpack_gev(raw: np.ndarray, bits: int, count: int) -> np.ndarray:
    """GigE Vision 'Packed': 3 bytes per 2 pixels, high bits in bytes 0 and 2."""
    b = _groups(raw, 3, 2, count)
    out = np.empty(b.shape[0] * 2, dtype=np.uint16)
    low = bits - 8
    mask = (1 << low) - 1
    out[0::2] = (b[:, 0] << low) | (b[:, 1] & mask)
    out[1::2] = (b[:, 2] << low) | ((b[:, 1] >> 4) & mask)
    return out[:count]


def _packed_size(pixel_format: str, count: int) -> int:
    if pixel_format == "Mono10p":
        return (count * 10 + 7) // 8
    if pixel_format == "Mono12p":
        return (count * 12 + 7) // 8
    return (count + 1) // 2 * 3  # GigE Vision: 3 bytes per pixel pair


def to_frame_image(
    data: np.ndarray | bytes, width: int, height: int, pixel_format: str
) -> np.ndarray:
    """The camera's pixels as uint8 HxW (mono formats) or HxWx3 BGR (colour formats).

    Raises PixelFormatError for an unsupported format (naming the supported ones) or for too
    little data.
    """
    if pixel_format not in SUPPORTED:
        raise PixelFormatError(
            f"unsupported pixel format {pixel_format!r}; supported: {', '.join(SUPPORTED)}"
        )
    if width <= 0 or height <= 0:
        raise PixelFormatError(f"bad image size {width}x{height}")
    arr = (
        np.frombuffer(data, dtype=np.uint8)
        if isinstance(data, (bytes, bytearray, memoryview))
        else np.asarray(data)
    )
    count = width * height

    if pixel_format == "Mono8":
        return (
            _need(arr.astype(np.uint8, copy=False), count, pixel_format, width, height)
            .reshape(height, width)
            .copy()
        )
    if pixel_format in ("RGB8", "BGR8"):
        img = _need(
            arr.astype(np.uint8, copy=False), count * 3, pixel_format, width, height
        ).reshape(height, width, 3)
        return np.ascontiguousarray(img[:, :, ::-1]) if pixel_format == "RGB8" else img.copy()
    if pixel_format in _BAYER:
        mosaic = _need(
            arr.astype(np.uint8, copy=False), count, pixel_format, width, height
        ).reshape(height, width)
        return cv2.cvtColor(np.ascontiguousarray(mosaic), _BAYER[pixel_format])

    if pixel_format in _UNPACKED_BITS:
        bits = _UNPACKED_BITS[pixel_format]
        if arr.dtype == np.uint8:  # raw bytes: little-endian 16-bit containers
            raw = _need(arr, count * 2, pixel_format, width, height)
            values = raw.view("<u2")
        else:
            values = _need(arr, count, pixel_format, width, height).astype(np.uint16, copy=False)
    else:
        bits = _PACKED_BITS[pixel_format]
        if arr.dtype != np.uint8:  # already unpacked (harvesters expands packed formats)
            values = _need(arr, count, pixel_format, width, height).astype(np.uint16, copy=False)
        else:
            raw = _need(arr, _packed_size(pixel_format, count), pixel_format, width, height)
            if pixel_format.endswith("p"):
                values = _unpack_pfnc(raw, bits, count)
            else:
                values = _unpack_gev(raw, bits, count)
    shift = bits - 8
    return (values >> shift).astype(np.uint8).reshape(height, width)
