"""JPEG block patching: untouched blocks byte-identical, the input's tables, markers and orientation kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from chinfix.contract import EditOptions, OutputFormat
from chinfix.imaging import EXIF_ORIENTATION_TAG, ImageLimits, decode_image, stored_from_upright
from chinfix.jpeg_patch import changed_mcu_grid, patch_jpeg
from chinfix.outputs import encode_result
from tests.photo_files import EXIF_MAKE_TAG, dct_of, display_p3_like_profile, heic_bytes, phone_jpeg, smooth_rgb, stored_pixels

LIMITS = ImageLimits(max_pixels=10**8, min_side=1)


def allowed_to_change(changed: np.ndarray, mcu_size: tuple[int, int]) -> np.ndarray:
    """HxW bool: the MCUs holding a changed pixel, grown by one MCU (chroma upsampling mixes neighbours)."""
    grid = changed_mcu_grid(changed[:, :, None], np.zeros_like(changed[:, :, None]), mcu_size)
    grown = grid.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(grid, dy, axis=0), dx, axis=1) & _no_wrap(grid.shape, dy, dx)
    pixels = np.repeat(np.repeat(grown, mcu_size[0], axis=0), mcu_size[1], axis=1)
    return pixels[: changed.shape[0], : changed.shape[1]]


def _no_wrap(shape: tuple[int, int], dy: int, dx: int) -> np.ndarray:
    keep = np.ones(shape, bool)
    if dy == 1:
        keep[0] = False
    if dy == -1:
        keep[-1] = False
    if dx == 1:
        keep[:, 0] = False
    if dx == -1:
        keep[:, -1] = False
    return keep


def assert_blocks_kept(original: bytes, patched: bytes, changed_stored: np.ndarray) -> None:
    """Tables and sampling identical; every component's blocks outside the changed MCUs identical; decoded pixels
    identical outside the changed MCUs plus one MCU."""
    before, after = dct_of(original), dct_of(patched)
    assert np.array_equal(before.qt, after.qt) and np.array_equal(before.quant_tbl_no, after.quant_tbl_no)
    assert np.array_equal(before.samp_factor, after.samp_factor)
    factors = np.asarray(before.samp_factor)
    mcu_size = (8 * int(factors[:, 0].max()), 8 * int(factors[:, 1].max()))
    grid = changed_mcu_grid(changed_stored[:, :, None], np.zeros_like(changed_stored[:, :, None]), mcu_size)
    for component, (vertical, horizontal) in zip(("Y", "Cb", "Cr"), factors, strict=True):
        blocks = np.repeat(np.repeat(grid, vertical, axis=0), horizontal, axis=1)
        kept = ~blocks[: getattr(before, component).shape[0], : getattr(before, component).shape[1]]
        assert np.array_equal(getattr(before, component)[kept], getattr(after, component)[kept]), component
    differs = (stored_pixels(original) != stored_pixels(patched)).any(axis=2)
    assert differs.any(), "the edit did not reach the file"
    outside = differs & ~allowed_to_change(changed_stored, mcu_size)
    assert not outside.any(), f"{int(outside.sum())} pixels changed away from the edited MCUs"


@pytest.mark.parametrize("orientation", [1, 6, 3, 8])
def test_only_the_edited_mcus_are_reencoded(orientation: int) -> None:
    profile = display_p3_like_profile()
    original = phone_jpeg(smooth_rgb(240, 328), orientation, profile)
    photo = decode_image(original, LIMITS)
    edited = photo.rgb.copy()
    edited[150:190, 100:170] //= 2  # in upright pixels, as the pipeline edits
    options = EditOptions(output=OutputFormat.AUTO)
    result = encode_result(edited, None, photo, original, options)

    assert result.content_type == "image/jpeg" and result.details["jpeg"]["blocks_kept"] is True
    changed = np.zeros(photo.rgb.shape[:2], bool)
    changed[150:190, 100:170] = True
    assert_blocks_kept(original, result.data, stored_from_upright(changed, orientation))
    assert result.details["jpeg"]["changed_mcus"] < result.details["jpeg"]["total_mcus"] / 4

    output = Image.open(io.BytesIO(result.data))
    assert output.info["icc_profile"] == profile
    assert output.getexif()[EXIF_ORIENTATION_TAG] == orientation, "blocks patched in place keep the orientation"
    assert output.getexif()[EXIF_MAKE_TAG] == "chinfix-test-phone"
    # Displayed as the input was: the decode (orientation applied) matches the edit except within the changed MCUs.
    redecoded = decode_image(result.data, LIMITS).rgb
    assert np.abs(redecoded.astype(int) - edited.astype(int))[changed].mean() < 6


def test_an_unchanged_photo_keeps_every_block() -> None:
    original = phone_jpeg(smooth_rgb(120, 160), 1, display_p3_like_profile())
    photo = decode_image(original, LIMITS)
    patched = patch_jpeg(original, photo.rgb, photo.rgb.copy())
    assert patched.changed_mcus == 0
    assert np.array_equal(stored_pixels(patched.data), stored_pixels(original))


def test_strip_metadata_drops_exif_and_keeps_the_profile() -> None:
    profile = display_p3_like_profile()
    original = phone_jpeg(smooth_rgb(120, 160), 6, profile)
    photo = decode_image(original, LIMITS)
    edited = photo.rgb.copy()
    edited[:20] = 0
    for output in (OutputFormat.AUTO, OutputFormat.PNG, OutputFormat.WEBP):
        result = encode_result(edited, None, photo, original, EditOptions(output=output, strip_metadata=True))
        image = Image.open(io.BytesIO(result.data))
        assert image.info.get("icc_profile") == profile, output
        assert not image.getexif(), output
        assert "xmp" not in image.info


@pytest.mark.parametrize("output", [OutputFormat.PNG, OutputFormat.WEBP, OutputFormat.HEIC])
def test_other_outputs_keep_profile_and_exif_with_upright_orientation(output: OutputFormat) -> None:
    profile = display_p3_like_profile()
    original = phone_jpeg(smooth_rgb(120, 160), 6, profile)
    photo = decode_image(original, LIMITS)
    result = encode_result(photo.rgb, None, photo, original, EditOptions(output=output))
    image = Image.open(io.BytesIO(result.data))
    assert result.content_type == f"image/{output.value}"
    assert image.info.get("icc_profile") == profile
    assert image.getexif()[EXIF_ORIENTATION_TAG] == 1, "the pixels were turned upright"
    assert image.getexif()[EXIF_MAKE_TAG] == "chinfix-test-phone"
    decoded = np.asarray(image.convert("RGB"))
    if output is not OutputFormat.HEIC:  # PNG and WebP are lossless
        assert np.array_equal(decoded, photo.rgb)


def test_heic_is_decoded_and_answered_as_jpeg_under_auto() -> None:
    rgb = smooth_rgb(96, 128)
    profile = display_p3_like_profile()
    photo = decode_image(heic_bytes(rgb, profile), LIMITS)
    assert photo.source_format == "HEIF" and photo.rgb.shape == rgb.shape
    assert np.abs(photo.rgb.astype(int) - rgb.astype(int)).mean() < 4
    result = encode_result(photo.rgb, None, photo, b"", EditOptions())
    assert result.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(result.data)).info.get("icc_profile") == profile


@pytest.mark.parametrize(
    "save_args",
    [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2, "progressive": True}, {"subsampling": 2, "optimize": True}],
    ids=["4:4:4", "4:2:2", "progressive", "optimised-huffman"],
)
def test_other_sampling_layouts_and_progressive_files(save_args: dict) -> None:
    buffer = io.BytesIO()
    Image.fromarray(smooth_rgb(200, 300)).save(buffer, format="JPEG", quality=80, **save_args)
    original = buffer.getvalue()
    photo = decode_image(original, LIMITS)
    edited = photo.rgb.copy()
    edited[50:90, 100:150] //= 2
    result = encode_result(edited, None, photo, original, EditOptions())
    changed = np.zeros(edited.shape[:2], bool)
    changed[50:90, 100:150] = True
    assert_blocks_kept(original, result.data, changed)


def test_a_cmyk_jpeg_is_encoded_whole_and_says_why() -> None:
    buffer = io.BytesIO()
    Image.fromarray(smooth_rgb(120, 160)).convert("CMYK").save(buffer, format="JPEG", quality=90)
    photo = decode_image(buffer.getvalue(), LIMITS)
    result = encode_result(photo.rgb, None, photo, buffer.getvalue(), EditOptions())
    assert result.content_type == "image/jpeg" and result.details["jpeg"]["blocks_kept"] is False
    assert "JCS_CMYK" in result.details["jpeg"]["reason"]
