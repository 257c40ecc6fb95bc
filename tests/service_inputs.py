"""Crafted uploads for the API tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from app.bench import png_chunk


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


EXIF_ORIENTATION_TAG = 0x0112
STORED_QUARTER_TURNS = {6: 1, 8: -1, 3: 2}
"""EXIF orientation → quarter turns (counter-clockwise, np.rot90) from the upright picture to the stored pixels:
6 is displayed after a quarter turn clockwise, 8 after one counter-clockwise, 3 after a half turn."""


def jpeg_with_orientation(upright_rgb: np.ndarray, orientation: int) -> bytes:
    """The JPEG file a camera writes for an HxWx3 uint8 RGB picture held turned: turned pixels, EXIF tag."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright_rgb, STORED_QUARTER_TURNS[orientation])))
    exif = stored.getexif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid PNG header that claims width x height, with almost no pixel data behind it (a bomb's shape)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))



ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def interlaced_png(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB as an Adam7-interlaced PNG (Pillow writes none), every row with filter type 0."""
    height, width = rgb.shape[:2]
    raw = b""
    for x0, y0, dx, dy in ADAM7:
        reduced = rgb[y0::dy, x0::dx]
        if reduced.size:
            raw += b"".join(b"\0" + row.tobytes() for row in reduced)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))
