"""Upload decoding: formats, orientation, colour modes, limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from chinfix.contract import ErrorCode, OutputFormat
from chinfix.errors import ImageError
from chinfix.imaging import ImageLimits, decode_image, encode_image
from tests.service_inputs import jpeg_with_orientation

LIMITS = ImageLimits(max_pixels=40_000_000, min_side=64)


def asymmetric_rgb(height: int = 120, width: int = 200) -> np.ndarray:
    """HxWx3 uint8 with a red top-left block: any rotation or flip moves it."""
    image = np.full((height, width, 3), 40, np.uint8)
    image[: height // 3, : width // 4] = (230, 20, 20)
    return image


def encoded(image: Image.Image, image_format: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_args)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = asymmetric_rgb()
    decoded = decode_image(jpeg_with_orientation(upright, orientation), LIMITS)
    assert decoded.rgb.shape == upright.shape
    assert np.abs(decoded.rgb.astype(int) - upright.astype(int)).mean() < 3


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    rgb = asymmetric_rgb()
    data = encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    decoded = decode_image(data, LIMITS)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == rgb.shape
    assert np.abs(decoded.rgb.astype(int) - rgb.astype(int)).mean() < 8


def test_sixteen_bit_gray_png_becomes_8_bit_rgb() -> None:
    ramp = (np.linspace(0, 65535, 100 * 80).reshape(80, 100)).astype(np.uint16)
    decoded = decode_image(encoded(Image.fromarray(ramp), "PNG"), LIMITS)
    assert decoded.rgb.shape == (80, 100, 3) and decoded.rgb.dtype == np.uint8
    assert decoded.rgb[0, 0, 0] == 0 and decoded.rgb[-1, -1, 0] == 255


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((70, 70, 4), np.uint8)
    rgba[:35] = (0, 0, 255, 255)
    palette = Image.fromarray(rgba, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 69))
    decoded = decode_image(encoded(palette, "PNG", transparency=palette.getpixel((0, 69))), LIMITS)
    assert tuple(decoded.rgb[0, 0]) == (0, 0, 255)
    assert tuple(decoded.rgb[-1, -1]) == (255, 255, 255)


def test_grayscale_and_rgba_webp_become_rgb() -> None:
    gray = Image.fromarray(np.full((70, 90), 128, np.uint8))
    assert decode_image(encoded(gray, "WEBP", lossless=True), LIMITS).rgb.shape == (70, 90, 3)
    rgba = Image.fromarray(np.full((70, 90, 4), 200, np.uint8), "RGBA")
    assert decode_image(encoded(rgba, "PNG"), LIMITS).rgb.shape == (70, 90, 3)


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        (b"", ErrorCode.EMPTY_UPLOAD, 400),
        (b"just some text, not a photo", ErrorCode.UNSUPPORTED_FORMAT, 415),
        (b"GIF89a" + b"\0" * 100, ErrorCode.UNSUPPORTED_FORMAT, 415),
    ],
)
def test_not_an_image_is_refused(data: bytes, code: ErrorCode, status: int) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(data, LIMITS)
    assert (caught.value.code, caught.value.http_status) == (code, status)


def test_limits_come_from_the_header() -> None:
    small = encoded(Image.fromarray(asymmetric_rgb(100, 100)), "PNG")
    with pytest.raises(ImageError) as caught:
        decode_image(small, ImageLimits(max_pixels=9_999, min_side=64))
    assert caught.value.code is ErrorCode.IMAGE_TOO_LARGE
    with pytest.raises(ImageError) as caught:
        decode_image(small, ImageLimits(max_pixels=40_000_000, min_side=101))
    assert caught.value.code is ErrorCode.IMAGE_TOO_SMALL


@pytest.mark.parametrize("output", [output for output in OutputFormat if output is not OutputFormat.AUTO])
def test_encode_round_trip(output: OutputFormat) -> None:
    rgb = asymmetric_rgb()
    decoded = decode_image(encode_image(rgb, output, quality=95), LIMITS)
    assert decoded.rgb.shape == rgb.shape
    assert np.abs(decoded.rgb.astype(int) - rgb.astype(int)).mean() < 4
    if output in (OutputFormat.PNG, OutputFormat.WEBP):
        assert np.array_equal(decoded.rgb, rgb), "PNG and WebP are lossless"


def test_auto_is_not_an_encoding() -> None:
    with pytest.raises(ValueError, match="auto"):
        encode_image(asymmetric_rgb(), OutputFormat.AUTO)
