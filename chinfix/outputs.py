"""The bytes a job answers with: the edited photo in the input's format, the edited patch, or the neck mask.

Torch-free. The photo keeps its colour profile always and its EXIF/XMP unless stripped; a JPEG input answered
as JPEG keeps every block the edit did not touch (`chinfix.jpeg_patch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chinfix.contract import EditOptions, OutputFormat, ReturnKind
from chinfix.imaging import DecodedImage, encode_image, stored_from_upright
from chinfix.jpeg_patch import NotPatchable, patch_jpeg

AUTO_OUTPUT = {"JPEG": OutputFormat.JPEG, "PNG": OutputFormat.PNG, "WEBP": OutputFormat.WEBP, "HEIF": OutputFormat.JPEG}
"""output=auto: the input's own format, except HEIC, which most apps' image stacks cannot show: JPEG."""


@dataclass(frozen=True)
class EncodedResult:
    data: bytes
    content_type: str
    width: int
    height: int
    details: dict[str, Any] = field(default_factory=dict)
    """Facts for the result record: how the photo was written (`jpeg`), the patch's `offset`."""


def resolve_output(requested: OutputFormat, source_format: str) -> OutputFormat:
    return AUTO_OUTPUT[source_format] if requested is OutputFormat.AUTO else requested


def encode_result(
    image: np.ndarray,
    photo_mask: np.ndarray | None,
    photo: DecodedImage,
    source_bytes: bytes,
    options: EditOptions,
) -> EncodedResult:
    """image: the pipeline's HxWx3 uint8 RGB (the upright photo, or the aligned crop for return=aligned);
    photo_mask: HxW float32 0..1, how much of the edit each photo pixel took (None when nothing was edited)."""
    if options.return_kind is ReturnKind.MASK:
        mask = np.zeros(photo.rgb.shape[:2], np.uint8) if photo_mask is None else mask_uint8(photo_mask)
        return _png(mask)
    if options.return_kind is ReturnKind.PATCH:
        return encode_patch(image, photo.rgb, photo_mask)
    output = resolve_output(options.output, photo.source_format)
    if options.return_kind is ReturnKind.PHOTO and output is OutputFormat.JPEG and photo.source_format == "JPEG":
        try:
            return _patched_jpeg(image, photo, source_bytes, options.strip_metadata)
        except NotPatchable as reason:
            details = {"jpeg": {"blocks_kept": False, "reason": str(reason)}}
            return _encoded(image, output, options, photo, details)
    return _encoded(image, output, options, photo, {})


def mask_uint8(photo_mask: np.ndarray) -> np.ndarray:
    """HxW float 0..1 → HxW uint8 0..255, rounded; any pixel the edit touched at all stays above 0."""
    scaled = np.rint(np.clip(photo_mask, 0.0, 1.0) * 255.0).astype(np.uint8)
    scaled[(photo_mask > 0) & (scaled == 0)] = 1
    return scaled


def encode_patch(edited_rgb: np.ndarray, original_rgb: np.ndarray, photo_mask: np.ndarray | None) -> EncodedResult:
    """A PNG of the edited region's bounding box: RGB the edited pixels, alpha 255 where the edit blended in and
    0 elsewhere, so drawing it over the original at `offset` gives the edited photo exactly."""
    touched = (edited_rgb != original_rgb).any(axis=2)
    if photo_mask is not None:
        touched |= photo_mask > 0
    rows, cols = np.nonzero(touched.any(axis=1))[0], np.nonzero(touched.any(axis=0))[0]
    if rows.size == 0:
        top = left = 0
        rgba = np.zeros((1, 1, 4), np.uint8)
    else:
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        rgba = np.dstack([edited_rgb[top:bottom, left:right], touched[top:bottom, left:right].astype(np.uint8) * 255])
    result = _png(rgba)
    return EncodedResult(
        data=result.data,
        content_type=result.content_type,
        width=result.width,
        height=result.height,
        details={"offset": {"left": int(left), "top": int(top)}},
    )


def _patched_jpeg(edited_rgb: np.ndarray, photo: DecodedImage, source_bytes: bytes, strip: bool) -> EncodedResult:
    # The edit happened on upright pixels; the file's blocks are in its stored layout, which the EXIF
    # orientation (kept as it was) turns upright again on display.
    patched = patch_jpeg(
        source_bytes,
        stored_from_upright(photo.rgb, photo.orientation),
        stored_from_upright(edited_rgb, photo.orientation),
        strip_metadata=strip,
    )
    height, width = edited_rgb.shape[:2]
    return EncodedResult(
        data=patched.data,
        content_type=OutputFormat.JPEG.content_type,
        width=width,
        height=height,
        details={
            "jpeg": {
                "blocks_kept": True,
                "changed_mcus": patched.changed_mcus,
                "total_mcus": patched.total_mcus,
                "mcu_size": list(patched.mcu_size),
            }
        },
    )


def _encoded(
    image: np.ndarray, output: OutputFormat, options: EditOptions, photo: DecodedImage, details: dict[str, Any]
) -> EncodedResult:
    metadata = photo.metadata.for_upright_pixels(options.strip_metadata)
    height, width = image.shape[:2]
    return EncodedResult(
        data=encode_image(image, output, options.quality, metadata),
        content_type=output.content_type,
        width=width,
        height=height,
        details=details,
    )


def _png(pixels: np.ndarray) -> EncodedResult:
    height, width = pixels.shape[:2]
    return EncodedResult(
        data=encode_image(pixels, OutputFormat.PNG), content_type="image/png", width=width, height=height
    )
