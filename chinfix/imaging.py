"""Decoding uploads into upright 8-bit RGB, and encoding results. Torch-free: the API validates with it.

The order of checks matters: the format is sniffed from the bytes (never the declared type), the pixel count
is read from the header before any pixel is decoded, so a decompression bomb costs nothing. HEIC/HEIF goes
through the same checks (pillow-heif reads the size from the container before decoding).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from chinfix.contract import ErrorCode, OutputFormat
from chinfix.errors import ImageError

pillow_heif.register_heif_opener()

_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
}
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
"""ISO-BMFF major brands of HEIC/HEIF stills and sequences (AVIF's 'avif' is not among them)."""
EXIF_ORIENTATION_TAG = 0x0112
ACCEPTED_FORMATS = "JPEG, PNG, WebP or HEIC"


@dataclass(frozen=True)
class ImageMetadata:
    """What an output keeps of its input: the colour profile always, EXIF and XMP unless stripped."""

    icc_profile: bytes | None = None
    exif: bytes | None = None
    """Raw EXIF (as Pillow's `exif=` takes it); the orientation is whatever the input said."""
    xmp: bytes | None = None

    def for_upright_pixels(self, strip: bool) -> ImageMetadata:
        """The metadata of an output whose pixels are upright: EXIF orientation 1, or no EXIF/XMP at all."""
        if strip:
            return ImageMetadata(icc_profile=self.icc_profile)
        exif = self.exif
        if exif:
            parsed = Image.Exif()
            parsed.load(exif)
            parsed[EXIF_ORIENTATION_TAG] = 1
            exif = parsed.tobytes()
        return ImageMetadata(icc_profile=self.icc_profile, exif=exif, xmp=self.xmp)


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray
    """HxWx3 uint8 RGB, EXIF orientation applied."""
    source_format: str
    """JPEG, PNG, WEBP or HEIF."""
    orientation: int = 1
    """The EXIF orientation the stored pixels had (1..8); `rgb` is already turned upright."""
    metadata: ImageMetadata = ImageMetadata()

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
    """JPEG, PNG, WEBP or HEIF from the magic bytes; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "HEIF"
    for name, prefixes in _SIGNATURES.items():
        if data.startswith(prefixes):
            return name
    return None


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Validate and decode an upload. Raises ImageError with the HTTP status the API should answer."""
    if not data:
        raise ImageError(ErrorCode.EMPTY_UPLOAD, f"The upload is empty: send a {ACCEPTED_FORMATS} photo.", 400)
    image_format = sniff_format(data)
    if image_format is None:
        raise ImageError(ErrorCode.UNSUPPORTED_FORMAT, f"The upload is not a {ACCEPTED_FORMATS} image.", 415)
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
            orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
            metadata = ImageMetadata(
                icc_profile=image.info.get("icc_profile") or None,
                exif=image.info.get("exif") or None,
                xmp=_xmp_of(image),
            )
            upright = ImageOps.exif_transpose(image)
            rgb = to_rgb8(upright)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise _unreadable(image_format, error) from None
    return DecodedImage(
        rgb=rgb,
        source_format=image_format,
        orientation=orientation if 1 <= orientation <= 8 else 1,
        metadata=metadata,
    )


def _xmp_of(image: Image.Image) -> bytes | None:
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode()
    return xmp or None


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


def encode_image(
    rgb: np.ndarray, output: OutputFormat, quality: int = 95, metadata: ImageMetadata = ImageMetadata()
) -> bytes:
    """HxWx3 uint8 RGB, HxWx4 RGBA or HxW uint8 gray to the bytes of a JPEG, PNG, lossless WebP or HEIC file,
    carrying `metadata` (pass it already adjusted to the pixels: see `ImageMetadata.for_upright_pixels`)."""
    buffer = io.BytesIO()
    image = Image.fromarray(rgb)
    extra = {
        key: value
        for key, value in (("icc_profile", metadata.icc_profile), ("exif", metadata.exif), ("xmp", metadata.xmp))
        if value
    }
    if output is OutputFormat.JPEG:
        image.save(buffer, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **extra)
    elif output is OutputFormat.WEBP:
        image.save(buffer, format="WEBP", lossless=True, quality=100, **extra)
    elif output is OutputFormat.HEIC:
        image.save(buffer, format="HEIF", quality=quality, **extra)
    elif output is OutputFormat.PNG:
        extra.pop("xmp", None)  # Pillow writes no XMP chunk to PNG
        image.save(buffer, format="PNG", compress_level=3, **extra)
    else:
        raise ValueError(f"{output} is not an encoding; resolve 'auto' against the input first")
    return buffer.getvalue()


def stored_from_upright(upright: np.ndarray, orientation: int) -> np.ndarray:
    """An upright HxW(xC) array turned back into the file's stored pixel layout for EXIF `orientation`."""
    if orientation == 6:
        return np.ascontiguousarray(np.rot90(upright, 1))
    if orientation == 8:
        return np.ascontiguousarray(np.rot90(upright, -1))
    # The other orientations are their own inverses.
    return upright_from_stored(upright, orientation)


def upright_from_stored(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What Pillow's `ImageOps.exif_transpose` does, on an HxW(xC) array."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }[orientation](stored)
    return np.ascontiguousarray(turned)


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
