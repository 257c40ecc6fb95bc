"""Decoding uploads into upright 8-bit RGB, and encoding results. Torch-free: the API validates with it.

The order of checks matters: the format is sniffed from the bytes (never the declared type), the pixel count
is read from the header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chinfix.contract import ErrorCode, OutputFormat
from chinfix.errors import ImageError

_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
}


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray
    """HxWx3 uint8 RGB, EXIF orientation applied."""
    source_format: str
    """JPEG, PNG or WEBP."""

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int
    min_side: int


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the magic bytes; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for name, prefixes in _SIGNATURES.items():
        if data.startswith(prefixes):
            return name
    return None


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Validate and decode an upload. Raises ImageError with the HTTP status the API should answer."""
    if not data:
        raise ImageError(ErrorCode.EMPTY_UPLOAD, "The upload is empty: send a JPEG, PNG or WebP photo.", 400)
    image_format = sniff_format(data)
    if image_format is None:
        raise ImageError(
            ErrorCode.UNSUPPORTED_FORMAT, "The upload is not a JPEG, PNG or WebP image.", 415
        )
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError:
        raise _too_large(None, limits) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise _unreadable(image_format, error) from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise _too_large((width, height), limits)
        if min(width, height) < limits.min_side:
            raise ImageError(
                ErrorCode.IMAGE_TOO_SMALL,
                f"The image is {width}x{height}; each side must be at least {limits.min_side} pixels.",
                422,
            )
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = to_rgb8(upright)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise _unreadable(image_format, error) from None
    return DecodedImage(rgb=rgb, source_format=image_format)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL mode as HxWx3 uint8 RGB: 16-bit scaled down, alpha composited on white, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        depth16 = np.asarray(image, dtype=np.uint32)
        gray8 = (depth16 >> 8).astype(np.uint8) if depth16.max(initial=0) > 255 else depth16.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def encode_image(rgb: np.ndarray, output: OutputFormat, quality: int = 95) -> bytes:
    """HxWx3 uint8 RGB (or HxW uint8 gray) to the bytes of a JPEG, PNG or WebP file."""
    buffer = io.BytesIO()
    image = Image.fromarray(rgb)
    if output is OutputFormat.JPEG:
        image.save(buffer, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif output is OutputFormat.WEBP:
        image.save(buffer, format="WEBP", quality=quality)
    else:
        image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _too_large(size: tuple[int, int] | None, limits: ImageLimits) -> ImageError:
    described = f"{size[0]}x{size[1]} pixels" if size else "far too many pixels"
    return ImageError(
        ErrorCode.IMAGE_TOO_LARGE,
        f"The image has {described}; the limit is {limits.max_pixels / 1e6:g} megapixels.",
        413,
    )


def _unreadable(image_format: str, error: Exception) -> ImageError:
    return ImageError(
        ErrorCode.IMAGE_UNREADABLE,
        f"The {image_format} file could not be decoded ({error}); it may be truncated or corrupt.",
        422,
    )
