"""Issue 11 §3: the API proves an upload decodable without decoding its pixels; the worker decodes under a
memory budget. Each damaged file here is one a full decode refuses too."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from chinfix.contract import ErrorCode
from chinfix.errors import ImageError
from chinfix.imaging import ImageLimits, check_upload, decode_image
from app.bench import png_chunk
from tests.service_inputs import interlaced_png

LIMITS = ImageLimits(max_pixels=40_000_000, min_side=64)
RGB = np.random.default_rng(11).integers(0, 256, (90, 130, 3), dtype=np.uint8)


def encoded(image: Image.Image, image_format: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_args)
    return buffer.getvalue()


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    found, position = [], 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        found.append((png[position + 4 : position + 8], png[position + 8 : position + 8 + length]))
        position += 12 + length
    return found


def rebuilt_png(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, body) for kind, body in parts)


def with_idat_raw(png: bytes, edit) -> bytes:
    """The PNG with its inflated image data changed by `edit`, recompressed, every CRC right."""
    parts = chunks(png)
    raw = zlib.decompress(b"".join(body for kind, body in parts if kind == b"IDAT"))
    others = [(kind, body) for kind, body in parts if kind not in (b"IDAT", b"IEND")]
    return rebuilt_png([*others, (b"IDAT", zlib.compress(edit(raw))), (b"IEND", b"")])


image = Image.fromarray(RGB)
VALID = {
    "jpeg": encoded(image, "JPEG", quality=90),
    "jpeg-progressive": encoded(image, "JPEG", progressive=True),
    "jpeg-restart-markers": encoded(image, "JPEG", restart_marker_rows=1),
    "png-rgb": encoded(image, "PNG"),
    "png-rgba": encoded(image.convert("RGBA"), "PNG"),
    "png-palette": encoded(image.convert("P"), "PNG"),
    "png-1bit": encoded(image.convert("1"), "PNG"),
    "png-gray-alpha": encoded(image.convert("LA"), "PNG"),
    "png-16bit": encoded(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257), "PNG"),
    "png-interlaced": interlaced_png(RGB),
    "webp-lossy": encoded(image, "WEBP"),
    "webp-lossless": encoded(image, "WEBP", lossless=True),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_files_pass_and_decode(name: str) -> None:
    info = check_upload(VALID[name], LIMITS)
    assert (info.width, info.height) == (130, 90)
    assert decode_image(VALID[name], LIMITS).rgb.shape == (90, 130, 3)


def test_the_interlaced_png_is_the_picture() -> None:
    assert np.array_equal(decode_image(VALID["png-interlaced"], LIMITS).rgb, RGB)


PNG = VALID["png-rgb"]
JPEG = VALID["jpeg"]
DAMAGED = {
    "jpeg-cut-in-the-scan": JPEG[: len(JPEG) * 2 // 3],
    "jpeg-without-end": JPEG[:-2],
    "jpeg-scan-before-frame": JPEG[:2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + JPEG[2:],
    "png-cut": PNG[: len(PNG) - 40],
    "png-flipped-bit": PNG[:60] + bytes([PNG[60] ^ 0x10]) + PNG[61:],
    "png-short-data": with_idat_raw(PNG, lambda raw: raw[:-500]),
    "png-bad-filter-byte": with_idat_raw(PNG, lambda raw: raw[: 391 * 7] + b"\x09" + raw[391 * 7 + 1 :]),
    "webp-cut": VALID["webp-lossy"][:-30],
}


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_files_are_unreadable_without_a_decode(name: str) -> None:
    with pytest.raises(ImageError) as caught:
        check_upload(DAMAGED[name], LIMITS)
    assert (caught.value.code, caught.value.http_status) == (ErrorCode.IMAGE_UNREADABLE, 422)
    assert "<" not in caught.value.message and "0x" not in caught.value.message
    if not name.startswith("webp"):  # the worker's full decode agrees
        with pytest.raises(ImageError):
            decode_image(DAMAGED[name], LIMITS)


def test_the_worker_decodes_under_a_memory_budget() -> None:
    big = encoded(Image.new("RGB", (2000, 1500), (90, 90, 90)), "PNG")
    budget = ImageLimits(max_pixels=40_000_000, min_side=64, decode_budget_bytes=10_000_000)
    with pytest.raises(ImageError) as caught:
        decode_image(big, budget)
    assert caught.value.code is ErrorCode.IMAGE_TOO_LARGE and "budget" in caught.value.message
    assert decode_image(VALID["png-rgb"], budget).rgb.shape == (90, 130, 3)


def test_unreadable_messages_carry_no_python_reprs() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(b"\xff\xd8\xff" + b"junk" * 40, LIMITS)
    assert "object at" not in caught.value.message and "0x" not in caught.value.message
