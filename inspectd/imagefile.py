"""Image files: one decoder for the folder camera, training, evaluation and calibration.

A file cut short (a camera or a copy still writing it) is refused here, so a partial image never
reaches the model, neither in the daemon nor in a training set.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# what the folder readers take as images
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class ImageFileError(ValueError):
    """The file cannot be read or decoded whole; the message names the file and the reason."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"


def _png_complete(data: bytes) -> bool:
    """Walk the chunk list: every chunk whole, up to and including IEND."""
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 12 <= end:  # length(4) type(4) data(length) crc(4)
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk_end = pos + 12 + length
        if chunk_end > end:
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = chunk_end
    return False


def _jpeg_complete(data: bytes) -> bool:
    """An EOI marker must follow the last start-of-scan.

    Entropy-coded data never holds 0xFF followed by 0xDA or 0xD9 (a data 0xFF is stuffed
    with 0x00), so the last SOS is the start of the last scan and a file cut anywhere in
    that scan has no EOI after it. An EXIF thumbnail's EOI comes before the main image's SOS,
    and padding after the EOI does not matter.
    """
    sos = data.rfind(_JPEG_SOS)
    return sos != -1 and data.find(_JPEG_EOI, sos + 2) != -1


def _bmp_complete(data: bytes) -> bool:
    """The header states the file size (0 or garbage in rare writers: only a shortfall counts)."""
    if len(data) < 6:
        return False
    declared = int.from_bytes(data[2:6], "little")
    return len(data) >= declared


def _looks_truncated(data: bytes) -> bool:
    """Structural check for the formats whose decoders may hand back a partial image.

    OpenCV 5.0 with its bundled libpng/libjpeg-turbo returns None for a PNG or JPEG cut short,
    but older builds (and other libjpeg versions) return the decoded top part, padded with gray,
    with only a warning on stderr. That partial image must never reach the model as a good part.
    """
    if data.startswith(_PNG_SIGNATURE):
        return not _png_complete(data)
    if data.startswith(_JPEG_SOI):
        return not _jpeg_complete(data)
    if data.startswith(b"BM"):
        return not _bmp_complete(data)
    return False  # TIFF and the rest: the decoder's answer is all there is


def decode_image_file(file: Path) -> tuple[np.ndarray | None, str | None]:
    """(image, None), or (None, reason) when the file cannot be read or decoded whole.

    The image comes back as the file holds it (IMREAD_UNCHANGED): 16-bit, 4-channel and so on
    reach preprocessing, which decides; nothing is converted here.
    """
    name = file.name
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None, f"image file vanished before it could be read: {name}"
    except OSError as exc:
        return None, f"cannot read image file {name}: {exc.strerror or exc}"
    if not data:
        return None, f"empty image file: {name}"
    undecodable = f"cannot decode image file {name} (truncated or not an image)"
    if _looks_truncated(data):
        return None, undecodable
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None, undecodable
    if image is None or image.size == 0:
        return None, undecodable
    return image, None


def read_image(path: str | Path) -> np.ndarray:
    """Like decode_image_file, for tools: FileNotFoundError if absent, ImageFileError if bad."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image, reason = decode_image_file(path)
    if image is None:
        raise ImageFileError(f"{path}: {reason}")
    return image
