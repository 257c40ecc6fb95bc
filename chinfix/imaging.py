"""Checking uploads, decoding them into upright 8-bit RGB, and encoding results. Torch-free: the API uses it.

The order of checks matters: the format is sniffed from the bytes (never the declared type), the pixel count
is read from the header before any pixel is decoded, so a decompression bomb costs nothing.

The API never decodes pixels (`check_upload`): it reads the header and walks the file's structure, at a cost
bounded by the file's size (JPEG markers and entropy-coded segments, PNG chunks with their CRCs and a streamed
inflate that counts bytes without keeping them, WebP's RIFF chunks). The worker decodes (`decode_image`) under
a memory budget.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
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
    decode_budget_bytes: int | None = None
    """Most memory a decode may take (its pixel buffers); None: no limit beyond max_pixels."""


@dataclass(frozen=True)
class UploadInfo:
    width: int
    height: int
    source_format: str


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the magic bytes; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for name, prefixes in _SIGNATURES.items():
        if data.startswith(prefixes):
            return name
    return None


def check_upload(data: bytes, limits: ImageLimits) -> UploadInfo:
    """Validate an upload without decoding its pixels. Raises ImageError with the HTTP status to answer."""
    image_format, image = _open_checked(data, limits)
    with image:
        width, height = image.size
        verify_structure = _STRUCTURE_CHECKS[image_format]
        verify_structure(data, image)
    return UploadInfo(width=width, height=height, source_format=image_format)


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Validate and decode an upload. Raises ImageError with the HTTP status the API should answer."""
    image_format, image = _open_checked(data, limits)
    with image:
        if limits.decode_budget_bytes is not None and decode_cost_bytes(image) > limits.decode_budget_bytes:
            width, height = image.size
            raise ImageError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"Decoding this {width}x{height} {image_format} ({image.mode}) would take more memory than the "
                f"{limits.decode_budget_bytes / 1e6:g} MB budget of a worker.",
                413,
            )
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = to_rgb8(upright)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise _unreadable(image_format) from None
    return DecodedImage(rgb=rgb, source_format=image_format)


def decode_cost_bytes(image: Image.Image) -> int:
    """Memory a decode to upright RGB needs: the decoded buffer in the file's own mode, the turned copy and the
    RGB array."""
    pixels = image.size[0] * image.size[1]
    band_bytes = 2 if image.mode.startswith("I;16") else 4 if image.mode in ("I", "F") else 1
    decoded = pixels * len(image.getbands()) * band_bytes
    return 2 * decoded + pixels * 3


def _open_checked(data: bytes, limits: ImageLimits) -> tuple[str, Image.Image]:
    """Sniff the format and read the header (no pixels): the format and the lazily opened image, size checked."""
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error):
        raise _unreadable(image_format) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise _too_large((width, height), limits)
    if min(width, height) < limits.min_side:
        image.close()
        raise ImageError(
            ErrorCode.IMAGE_TOO_SMALL,
            f"The image is {width}x{height}; each side must be at least {limits.min_side} pixels.",
            422,
        )
    return image_format, image


_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The end of an entropy-coded segment: 0xFF followed by a marker byte (not a stuffed zero, not a restart)."""


def _verify_jpeg(data: bytes, image: Image.Image) -> None:
    """Every segment complete, a frame header before the first scan, every scan's data ended by a marker, and an
    end-of-image marker: what a truncated or spliced file lacks. Linear in the file size, no pixel buffers."""
    position, size = 2, len(data)
    frames = scans = 0
    while position < size:
        if data[position] != 0xFF:
            raise _unreadable("JPEG")
        while position < size and data[position] == 0xFF:
            position += 1
        if position >= size:
            break
        marker = data[position]
        position += 1
        if marker == 0xD9:
            if frames and scans:
                return
            break
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if position + 2 > size:
            break
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2 or position + length > size:
            break
        position += length
        frames += marker in _JPEG_FRAME_MARKERS
        if marker == 0xDA:
            if not frames:
                break
            scans += 1
            scan_end = _JPEG_SCAN_END.search(data, position)
            if scan_end is None:
                break
            position = scan_end.start()
    raise _unreadable("JPEG")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP_BYTES = 1 << 20


def _png_rows(width: int, height: int, bit_depth: int, color_type: int, interlaced: bool) -> list[tuple[int, int]]:
    """(rows, bytes per row including the filter byte) of each pass of the filtered image data."""
    bits_per_pixel = bit_depth * _PNG_CHANNELS[color_type]
    passes = _ADAM7_PASSES if interlaced else ((0, 0, 1, 1),)
    rows = []
    for x0, y0, dx, dy in passes:
        columns, pass_rows = math.ceil(max(width - x0, 0) / dx), math.ceil(max(height - y0, 0) / dy)
        if columns and pass_rows:
            rows.append((pass_rows, 1 + math.ceil(columns * bits_per_pixel / 8)))
    return rows


class _FilterByteCheck:
    """Follows the filtered image data as it is inflated and checks every row's filter type byte (0..4)."""

    def __init__(self, rows: list[tuple[int, int]]) -> None:
        self.passes = self._row_starts(rows)
        self.total = sum(count * stride for count, stride in rows)
        self.offset = 0

    @staticmethod
    def _row_starts(rows: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """(first byte, stride, end) of each pass."""
        starts, offset = [], 0
        for count, stride in rows:
            starts.append((offset, stride, offset + count * stride))
            offset += count * stride
        return starts

    def feed(self, piece: bytes) -> None:
        end = self.offset + len(piece)
        if end > self.total:
            raise _unreadable("PNG")
        view = np.frombuffer(piece, dtype=np.uint8)
        for first, stride, pass_end in self.passes:
            low, high = max(first, self.offset), min(pass_end, end)
            if low >= high:
                continue
            row_start = first + math.ceil((low - first) / stride) * stride
            if row_start < high and view[row_start - self.offset : high - self.offset : stride].max() > 4:
                raise _unreadable("PNG")
        self.offset = end


def _verify_png(data: bytes, image: Image.Image) -> None:
    """Every chunk complete with a correct CRC, up to IEND; the image data inflates to exactly the size the
    header implies, with a valid filter byte on every row. Inflated 1 MB at a time and thrown away, so a bomb
    costs CPU in proportion to its pixel count but no memory."""
    width, height = image.size
    header = data[16:29]
    bit_depth, color_type, interlace = header[8], header[9], header[12]
    if color_type not in _PNG_CHANNELS:
        raise _unreadable("PNG")
    rows = _FilterByteCheck(_png_rows(width, height, bit_depth, color_type, interlace == 1))
    inflater = zlib.decompressobj()
    position, size = 8, len(data)
    try:
        while position + 12 <= size:
            length, kind = struct.unpack(">I4s", data[position : position + 8])
            body_end = position + 8 + length
            if body_end + 4 > size:
                break
            if zlib.crc32(data[position + 4 : body_end]) != int.from_bytes(data[body_end : body_end + 4], "big"):
                break
            if kind == b"IDAT":
                pending = memoryview(data)[position + 8 : body_end]
                while pending and not inflater.eof:
                    rows.feed(inflater.decompress(pending, _INFLATE_STEP_BYTES))
                    pending = inflater.unconsumed_tail
            if kind == b"IEND":
                while not inflater.eof and (piece := inflater.decompress(b"", _INFLATE_STEP_BYTES)):
                    rows.feed(piece)
                if inflater.eof and rows.offset == rows.total:
                    return
                break
            position = body_end + 4
    except zlib.error:
        pass
    raise _unreadable("PNG")


def _verify_webp(data: bytes, image: Image.Image) -> None:
    """The RIFF container complete: every chunk's declared size fits, the first is VP8, VP8L or VP8X.
    (WebP cannot be decoded at reduced cost; the worker decodes it and reports a damaged stream.)"""
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if riff_end > len(data) or data[12:16] not in (b"VP8 ", b"VP8L", b"VP8X"):
        raise _unreadable("WEBP")
    position = 12
    while position + 8 <= riff_end:
        length = int.from_bytes(data[position + 4 : position + 8], "little")
        position += 8 + length + (length & 1)
    if position != riff_end and position != riff_end + 1:
        raise _unreadable("WEBP")


_STRUCTURE_CHECKS = {"JPEG": _verify_jpeg, "PNG": _verify_png, "WEBP": _verify_webp}


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


def _unreadable(image_format: str) -> ImageError:
    return ImageError(
        ErrorCode.IMAGE_UNREADABLE, f"The {image_format} file could not be decoded: it is truncated or corrupt.", 422
    )
