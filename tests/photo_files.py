"""Photo files as phones write them, for the output tests: JPEG with an ICC profile and EXIF, HEIC."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import jpeglib
import numpy as np
import pillow_heif
from PIL import Image, ImageCms

from tests.service_inputs import EXIF_ORIENTATION_TAG, STORED_QUARTER_TURNS

EXIF_MAKE_TAG = 0x010F


def display_p3_like_profile() -> bytes:
    """A real ICC profile that is not sRGB's, so a dropped or swapped profile shows."""
    profile = ImageCms.createProfile("LAB", 5000)
    return ImageCms.ImageCmsProfile(profile).tobytes()


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """HxWx3 uint8: gradients with some texture, like a photo (random noise would make every block busy)."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([cols / width * 200 + 30, rows / height * 180 + 40, 128 + 60 * np.sin(cols / 17 + rows / 23)], -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def phone_jpeg(upright_rgb: np.ndarray, orientation: int, icc_profile: bytes, quality: int = 88) -> bytes:
    """A 4:2:0 JPEG holding the picture turned as a camera stores it, with EXIF (make, orientation) and ICC."""
    turns = STORED_QUARTER_TURNS.get(orientation, 0)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright_rgb, turns)))
    exif = stored.getexif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    exif[EXIF_MAKE_TAG] = "chinfix-test-phone"
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=quality, subsampling=2, exif=exif, icc_profile=icc_profile)
    return buffer.getvalue()


def heic_bytes(rgb: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    image = pillow_heif.from_bytes(mode="RGB", size=(rgb.shape[1], rgb.shape[0]), data=np.ascontiguousarray(rgb).tobytes())
    if icc_profile:
        image.info["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    image.save(buffer, quality=90)
    return buffer.getvalue()


def stored_pixels(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB of a JPEG as stored (no EXIF orientation applied)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def dct_of(data: bytes) -> jpeglib.DCTJPEG:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.jpg"
        path.write_bytes(data)
        jpeg = jpeglib.read_dct(str(path))
        jpeg.load()
        return jpeg
