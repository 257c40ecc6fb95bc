"""Stage 6: paste an edited aligned crop back into the photo it was cut from.

Only the bounding box of the mask's footprint in the photo is resampled, so a 12-megapixel photo
costs what its face costs. Every photo pixel where the warped mask is 0 is returned byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from worker.pipeline.align import AlignmentTransform

EDGE_FEATHER_FRACTION = 1.0 / 64.0
"""The mask fades to 0 over this fraction of the crop's side at the crop's border: beyond the border
the photo has no edited pixels, and near it the crop holds FFHQ's blurred padding, so a mask reaching
the border must not end in a seam."""


@dataclass(frozen=True)
class FacePaste:
    """One edited face to paste: where its crop sits, the crop (SxSx3 uint8 RGB) and its soft mask (SxS float32
    in 0..1, aligned space)."""

    transform: AlignmentTransform
    edited_crop: np.ndarray
    soft_mask: np.ndarray


def paste_back(
    photo_rgb: np.ndarray,
    transform: AlignmentTransform,
    edited_crop: np.ndarray,
    soft_mask: np.ndarray,
    edge_feather_fraction: float = EDGE_FEATHER_FRACTION,
) -> np.ndarray:
    """The photo (HxWx3 uint8 RGB) with the edited crop (SxSx3 uint8 RGB) blended in under the soft
    mask (SxS float32 in 0..1, aligned space), both warped through the alignment transform."""
    pasted, _ = paste_back_faces(photo_rgb, [FacePaste(transform, edited_crop, soft_mask)], edge_feather_fraction)
    return pasted


def paste_back_faces(
    photo_rgb: np.ndarray, faces: list[FacePaste], edge_feather_fraction: float = EDGE_FEATHER_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(the photo with every face blended in, HxW float32 0..1 weight each photo pixel took from the edits).

    Where masks overlap and their weights add up past 1, each face's weight is scaled down by the sum: the
    pixel becomes their weighted mean instead of whichever face was pasted last, and never overshoots."""
    result = photo_rgb.copy()
    weights = np.zeros(photo_rgb.shape[:2], np.float32)
    placed = []
    for face in faces:
        size = face.transform.output_size
        if face.edited_crop.shape[:2] != face.soft_mask.shape or face.soft_mask.shape != (size, size):
            raise ValueError(
                f"crop {face.edited_crop.shape[:2]} and mask {face.soft_mask.shape} must both be "
                f"{size}x{size}, the alignment's output size"
            )
        mask = _feathered(face.soft_mask, edge_feather_fraction)
        box = _footprint_box(face.transform, mask, photo_rgb.shape[:2])
        if box is None:
            continue
        alpha = _warp_into_box(mask, face.transform, box, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT)
        warped_crop = _warp_into_box(face.edited_crop, face.transform, box, cv2.INTER_CUBIC, cv2.BORDER_REPLICATE)
        placed.append((box, alpha, warped_crop))
    if not placed:
        return result, weights
    left = min(box[0] for box, _, _ in placed)
    top = min(box[1] for box, _, _ in placed)
    right = max(box[2] for box, _, _ in placed)
    bottom = max(box[3] for box, _, _ in placed)
    total = np.zeros((bottom - top, right - left), np.float32)
    for (box_left, box_top, box_right, box_bottom), alpha, _ in placed:
        total[box_top - top : box_bottom - top, box_left - left : box_right - left] += alpha
    scale = 1.0 / np.maximum(total, 1.0)
    original = photo_rgb[top:bottom, left:right].astype(np.float32)
    change = np.zeros_like(original)
    for (box_left, box_top, box_right, box_bottom), alpha, warped_crop in placed:
        rows, cols = slice(box_top - top, box_bottom - top), slice(box_left - left, box_right - left)
        weight = alpha * scale[rows, cols]
        change[rows, cols] += (warped_crop.astype(np.float32) - original[rows, cols]) * weight[:, :, None]
        weights[box_top:box_bottom, box_left:box_right] += weight
    blended = original + change
    np.rint(blended, out=blended)
    inside = total > 0.0
    result[top:bottom, left:right][inside] = blended[inside].astype(np.uint8)
    return result, weights


def warp_mask_to_photo(
    transform: AlignmentTransform,
    soft_mask: np.ndarray,
    photo_shape: tuple[int, ...],
    edge_feather_fraction: float = EDGE_FEATHER_FRACTION,
) -> np.ndarray:
    """HxW float32 in 0..1: the blending weight `paste_back` gives each photo pixel (0 = left untouched)."""
    weights = np.zeros(photo_shape[:2], np.float32)
    mask = _feathered(soft_mask, edge_feather_fraction)
    box = _footprint_box(transform, mask, photo_shape[:2])
    if box is not None:
        left, top, right, bottom = box
        weights[top:bottom, left:right] = _warp_into_box(mask, transform, box, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT)
    return weights


def edge_feather(size: int, feather_px: float) -> np.ndarray:
    """SxS float32: 1 inside, falling linearly to 0 at the crop's outer edge over `feather_px` pixels."""
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5
    ramp = np.clip(distance / max(feather_px, 1e-6), 0.0, 1.0)
    return np.minimum(ramp[:, None], ramp[None, :])


def _feathered(soft_mask: np.ndarray, edge_feather_fraction: float) -> np.ndarray:
    size = soft_mask.shape[0]
    return np.clip(soft_mask.astype(np.float32), 0.0, 1.0) * edge_feather(size, size * edge_feather_fraction)


def _footprint_box(
    transform: AlignmentTransform, mask: np.ndarray, photo_hw: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), right/bottom exclusive: the photo pixels the mask's nonzero part can
    reach, clipped to the photo; None when there are none."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    # One aligned pixel out for the interpolation kernels' reach.
    corners = np.array(
        [[cols[0] - 1, rows[0] - 1], [cols[0] - 1, rows[-1] + 1], [cols[-1] + 1, rows[-1] + 1], [cols[-1] + 1, rows[0] - 1]],
        dtype=np.float64,
    )
    photo_corners = transform.to_photo(corners)
    height, width = photo_hw
    left = max(int(np.floor(photo_corners[:, 0].min())) - 1, 0)
    top = max(int(np.floor(photo_corners[:, 1].min())) - 1, 0)
    right = min(int(np.ceil(photo_corners[:, 0].max())) + 2, width)
    bottom = min(int(np.ceil(photo_corners[:, 1].max())) + 2, height)
    if left >= right or top >= bottom:
        return None
    return left, top, right, bottom


def _warp_into_box(
    aligned_image: np.ndarray,
    transform: AlignmentTransform,
    box: tuple[int, int, int, int],
    interpolation: int,
    border_mode: int,
) -> np.ndarray:
    """An SxS(x3) aligned-space image resampled onto the photo pixels of `box` (left, top, right, bottom).

    Where the photo's face is smaller than the crop, the image is first box-reduced to the face's size
    in the photo: interpolating straight from the larger crop would alias.
    """
    left, top, right, bottom = box
    size = transform.output_size
    photo_px_per_aligned_px = float(np.hypot(*(transform.quad[3] - transform.quad[0]))) / size
    source, source_from_aligned = aligned_image, np.eye(3)
    if photo_px_per_aligned_px < 1.0:
        reduced = max(int(np.ceil(size * photo_px_per_aligned_px)), 1)
        factor = reduced / size
        source = cv2.resize(aligned_image, (reduced, reduced), interpolation=cv2.INTER_AREA)
        # Reduced pixel u' covers the aligned pixels around (u' + 0.5) / factor - 0.5.
        source_from_aligned = np.array(
            [[factor, 0.0, 0.5 * factor - 0.5], [0.0, factor, 0.5 * factor - 0.5], [0.0, 0.0, 1.0]]
        )
    box_to_photo = np.array([[1.0, 0.0, left], [0.0, 1.0, top], [0.0, 0.0, 1.0]])
    box_to_source = source_from_aligned @ transform.photo_to_aligned @ box_to_photo
    return cv2.warpAffine(
        source,
        box_to_source[:2],
        (right - left, bottom - top),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=border_mode,
        borderValue=0,
    )
