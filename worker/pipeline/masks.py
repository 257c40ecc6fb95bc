"""Neck mask stage: where the edited generation may replace the aligned original.

The seed's mask (`get_neck_mask` in the authors' `neck_mask_extractor.py`), computed at the parser's
512 px: the parser's neck class plus the face skin below the row of landmarks 1 and 15, minus the jaw
polygon (landmarks 0..16), dilated, minus the jaw polygon again, then brought up to the crop's size.
The skin term covers the fold right under the jaw, which the parser calls skin. Without parser
weights, a landmark fallback stands in for "neck or skin below the jaw line" (skin-coloured pixels
under the jaw), and the same 512 px steps follow.

The soft mask D is `main_diffuse.py`'s: the hard mask dilated (30x30 at 1024) and box-blurred (35x35),
kept at full weight on the hard mask.

All images are SxSx3 uint8 RGB aligned crops; masks are SxS unless named `_512`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from worker.models.bisenet import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, FaceClass

FACE_CLASSES = (
    FaceClass.SKIN,
    FaceClass.LEFT_BROW,
    FaceClass.RIGHT_BROW,
    FaceClass.LEFT_EYE,
    FaceClass.RIGHT_EYE,
    FaceClass.EYEGLASSES,
    FaceClass.NOSE,
    FaceClass.MOUTH,
    FaceClass.UPPER_LIP,
    FaceClass.LOWER_LIP,
)
"""The seed's face region (`get_face_mask`): skin and the features on it; no ears, hair or neck."""

# 68-point (iBUG 300-W) indices
JAW = slice(0, 17)
LOWER_JAW = slice(4, 13)  # the part of the jaw line the neck hangs from (no ears or temples beside it)
BROWS_RIGHT_TO_LEFT = slice(26, 16, -1)  # walking back over the brows closes the jaw line into a face outline
CHIN = 8
SKIN_LINE_POINTS = (1, 15)  # the seed keeps face skin below the higher of these two jaw points
LEFT_CHEEK = (1, 2, 3, 4, 48, 31)
RIGHT_CHEEK = (15, 14, 13, 12, 54, 35)

REFERENCE_SIDE = 1024  # the seed's soft-mask kernel sizes are given for 1024x1024 crops
PARSE_SIDE = INPUT_SIZE  # the seed's hard-mask steps run at the parser's 512 px


class MaskSource(StrEnum):
    PARSING = "parsing"
    LANDMARKS = "landmarks"


@dataclass(frozen=True)
class HardMaskConfig:
    """The seed's 512 px steps after "neck or skin below the line": cut the jaw polygon (before the dilation
    too, when `cut_jaw_first`), dilate with a square kernel, cut the jaw polygon, and drop 4-connected blobs
    under `min_blob_area` pixels (unless that would drop everything).

    Diffuse uses `get_neck_mask`'s (the defaults); warp `get_neck_blur_mask(dilate=5)`'s (`WARP_HARD_MASK`).
    """

    dilate: int = 7
    min_blob_area: int = 0
    cut_jaw_first: bool = True


WARP_HARD_MASK = HardMaskConfig(dilate=5, min_blob_area=267, cut_jaw_first=False)
"""`get_neck_blur_mask(dilate=5)`. Its `remove_small_objects(min_size=800, connectivity=1)` runs on the HxWx3
mask, where each blob is a 3-voxel-deep object across the identical channels: 800 voxels are 267 pixels."""


@dataclass(frozen=True)
class SoftMaskConfig:
    """Kernel sizes at 1024x1024 (other resolutions scale them, at least 1 px). Diffuse: `main_diffuse.py`'s
    30 and 35; warp (and the seed's training-pair diffuse, `get_neck_blur_mask`): 15 and 25."""

    dilate_at_1024: int = 30
    blur_at_1024: int = 35


WARP_SOFT_MASK = SoftMaskConfig(dilate_at_1024=15, blur_at_1024=25)
"""The warp's soft mask (`get_neck_blur_mask`), and the one the seed's training-pair diffuse uses
(`remove_double_chin_step2.py`)."""


@dataclass(frozen=True)
class LandmarkMaskConfig:
    """The landmark fallback's skin-colour test and shape limits, in resolution-free units.

    Measured against the seed's own mask of `reference/synthetic_001645` (IoU, see tests/test_masks.py).
    """

    max_colour_distance: float = 4.0  # Mahalanobis distance in (r, g) chromaticity from the cheeks'
    min_chromaticity_std: float = 0.01  # floors the cheeks' spread so an evenly lit face still admits shading
    min_brightness_fraction: float = 0.35  # darker than this (of the cheeks) is hair or shadow, not skin
    smoothing_fraction: float = 1 / 256  # Gaussian sigma as a fraction of S; JPEG chroma is blocky
    jaw_lift_fraction: float = 0.015  # dlib's jaw line sits this much (of S) lower than the FAN one the seed used
    side_margin_fraction: float = 0.02  # the neck stays within this much (of S) outside jaw points 3 and 13


@dataclass(frozen=True)
class NeckMasks:
    """The neck mask stage's result.

    neck_mask: SxS bool; soft_mask: SxS float32 in [0, 1] (1 on the neck); face_region: SxS bool
    (face skin and features) and neck_region: SxS bool (the parser's neck class, or the fallback's neck
    region), the warp's contour sources; source: where they came from; class_map_512: the parser's
    512x512 uint8 classes (None for the fallback).
    """

    neck_mask: np.ndarray
    soft_mask: np.ndarray
    face_region: np.ndarray
    neck_region: np.ndarray
    source: MaskSource
    class_map_512: np.ndarray | None = None


def pil_bilinear_resize(image: np.ndarray, side: int) -> np.ndarray:
    """HxW or HxWx3 uint8 → side x side, resized with PIL's BILINEAR as the seed's code does (the parser's
    `test.py`, scipy's `imresize`). PIL widens the filter when shrinking, so this is not cv2's INTER_LINEAR."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


def parser_input(aligned_rgb: np.ndarray) -> np.ndarray:
    """SxSx3 uint8 RGB → 512x512x3 uint8 RGB, as the parser's `test.py` resizes it."""
    return pil_bilinear_resize(aligned_rgb, PARSE_SIDE)


def parse_face(parser: nn.Module, aligned_rgb: np.ndarray) -> np.ndarray:
    """SxSx3 uint8 RGB → 512x512 uint8 map of CelebAMask-HQ classes (see FaceClass)."""
    parameter = next(parser.parameters())
    image = torch.from_numpy(parser_input(aligned_rgb).copy()).to(device=parameter.device, dtype=torch.float32)
    image = image.permute(2, 0, 1).unsqueeze(0) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = parser((image - mean) / std)
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def upsample_mask(mask_512: np.ndarray, side: int) -> np.ndarray:
    """512x512 bool → SxS bool the seed's way: a bilinear resize of the 0/255 mask, then anything above 0."""
    if mask_512.shape[0] == side:
        return mask_512.copy()
    resized = cv2.resize(mask_512.astype(np.uint8) * 255, (side, side), interpolation=cv2.INTER_LINEAR)
    return resized > 0


def neck_mask_from_parsing(class_map: np.ndarray) -> np.ndarray:
    """HxW uint8 class map → HxW bool of the parser's neck class alone."""
    return class_map == FaceClass.NECK


def face_region_from_parsing(class_map: np.ndarray) -> np.ndarray:
    """HxW uint8 class map → HxW bool mask of the face's skin and features (no ears, hair or neck)."""
    return np.isin(class_map, np.array(FACE_CLASSES, dtype=np.uint8))


def fill_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nx2 (x, y) float polygon → HxW bool mask of its inside."""
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def jaw_polygon(landmarks68: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HxW bool inside of the jaw line's polygon (points 0..16), corners truncated to whole pixels as the
    seed's `chin_mask_extractor` does."""
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [landmarks68[JAW].astype(np.int32)], 1)
    return canvas.astype(bool)


def face_region_from_landmarks(landmarks68: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """68x2 (x, y) landmarks → HxW bool face outline: the jaw line closed over the brows."""
    outline = np.concatenate([landmarks68[JAW], landmarks68[BROWS_RIGHT_TO_LEFT]])
    return fill_polygon(outline, shape)


def rows_from(first_row: float, shape: tuple[int, int]) -> np.ndarray:
    """HxW bool: every row from int(first_row) down."""
    return (np.arange(shape[0]) >= int(first_row))[:, None] & np.ones(shape, bool)


def neck_or_low_skin_from_parsing(class_map_512: np.ndarray, landmarks_512: np.ndarray) -> np.ndarray:
    """512x512 bool: the parser's neck, and its face skin from the row of the higher of jaw points 1 and 15 down."""
    skin_line = min(landmarks_512[index, 1] for index in SKIN_LINE_POINTS)
    low_skin = (class_map_512 == FaceClass.SKIN) & rows_from(skin_line, class_map_512.shape)
    return neck_mask_from_parsing(class_map_512) | low_skin


def drop_small_blobs(mask: np.ndarray, min_area: int) -> np.ndarray:
    """HxW bool without its 4-connected blobs of fewer than `min_area` pixels (skimage's remove_small_objects)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    large = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area)
    large = large[large > 0]
    return np.isin(labels, large) if count > 1 else mask.copy()


def seed_hard_mask_512(region_512: np.ndarray, jaw_512: np.ndarray, config: HardMaskConfig = HardMaskConfig()) -> np.ndarray:
    """512x512 bool "neck or low skin" → the seed's hard neck mask at 512 (see HardMaskConfig)."""
    mask = region_512 & ~jaw_512 if config.cut_jaw_first else region_512.copy()
    if config.dilate > 0:
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((config.dilate, config.dilate), np.uint8)).astype(bool)
    mask &= ~jaw_512
    if config.min_blob_area > 0:
        kept = drop_small_blobs(mask, config.min_blob_area)
        mask = kept if kept.any() else mask  # the seed keeps the mask when every blob is small
    return mask


def chromaticity(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 uint8 RGB → (HxWx2 float32 (r, g) chromaticity in [0, 1], HxW float32 brightness R+G+B).

    Chromaticity divides out the brightness, so the shadowed neck under the chin has about
    the same (r, g) as the lit cheeks."""
    channels = rgb.astype(np.float32)
    brightness = channels.sum(axis=-1)
    return channels[..., :2] / np.maximum(brightness, 1.0)[..., None], brightness


def skin_colour_mask(aligned_rgb: np.ndarray, landmarks68: np.ndarray, config: LandmarkMaskConfig) -> np.ndarray:
    """SxS bool: pixels whose chromaticity is within `max_colour_distance` (Mahalanobis) of the
    cheeks' and that are not too dark for their chromaticity to mean anything."""
    shape = aligned_rgb.shape[:2]
    sigma = max(config.smoothing_fraction * shape[0], 0.5)
    colour, brightness = chromaticity(cv2.GaussianBlur(aligned_rgb, (0, 0), sigma))
    cheeks = np.zeros(shape, bool)
    for indices in (LEFT_CHEEK, RIGHT_CHEEK):
        polygon = landmarks68[list(indices)]
        centre = polygon.mean(axis=0)
        # shrunk towards its centre so beard stubble, hair and the mouth corner stay out
        cheeks |= fill_polygon(centre + 0.6 * (polygon - centre), shape)
    samples = colour[cheeks]
    if len(samples) < 3:
        return np.zeros(shape, bool)
    mean = samples.mean(axis=0)
    covariance = np.cov(samples.T) + np.eye(2) * config.min_chromaticity_std**2
    offset = colour - mean
    distance_sq = np.einsum("...i,ij,...j->...", offset, np.linalg.inv(covariance), offset)
    bright_enough = brightness > config.min_brightness_fraction * brightness[cheeks].mean()
    return (distance_sq < config.max_colour_distance**2) & bright_enough


def lifted_jaw(landmarks68: np.ndarray, side: int, config: LandmarkMaskConfig) -> np.ndarray:
    """The 68 landmarks with the jaw points (0..16) raised by `jaw_lift_fraction` of the side."""
    lifted = landmarks68.astype(np.float64).copy()
    lifted[JAW, 1] -= config.jaw_lift_fraction * side
    return lifted


def neck_or_low_skin_from_landmarks(
    aligned_rgb: np.ndarray, landmarks68: np.ndarray, config: LandmarkMaskConfig = LandmarkMaskConfig()
) -> np.ndarray:
    """SxS bool stand-in for the parser's "neck or skin below the line", from colour and landmarks alone.

    Skin-coloured pixels outside the jaw polygon that hang from the jaw line (a skin-coloured background
    elsewhere is not connected to it), holes filled. Beside the face, above the jaw's turn (points 3 and
    13), the seed's region is a sliver of cheek that colour cannot tell from ears and hair: it is left out,
    and the neck is kept within a margin of the columns of those two points.
    """
    shape = aligned_rgb.shape[:2]
    side = shape[0]
    landmarks = lifted_jaw(landmarks68, side, config)
    jaw = landmarks[JAW]
    margin = config.side_margin_fraction * side
    columns = np.zeros(shape, bool)
    columns[:, max(0, int(jaw[3, 0] - margin)) : max(0, int(jaw[13, 0] + margin) + 1)] = True
    below_turn = rows_from(min(jaw[3, 1], jaw[13, 1]), shape)
    candidate = below_turn & columns & ~jaw_polygon(landmarks, shape) & skin_colour_mask(aligned_rgb, landmarks68, config)

    opening = max(3, round(side / 128)) | 1  # cuts thin bridges to a skin-coloured background
    candidate = cv2.morphologyEx(candidate.astype(np.uint8), cv2.MORPH_OPEN, np.ones((opening, opening), np.uint8))
    jaw_band = np.zeros(shape, np.uint8)
    cv2.polylines(jaw_band, [np.round(jaw).astype(np.int32)], False, 1, thickness=opening * 2 + 1)
    _, labels = cv2.connectedComponents(candidate, connectivity=8)
    touching = np.unique(labels[(jaw_band > 0) & (candidate > 0)])
    return fill_holes(np.isin(labels, touching[touching > 0]))


def neck_mask_from_landmarks(
    aligned_rgb: np.ndarray,
    landmarks68: np.ndarray,
    config: LandmarkMaskConfig = LandmarkMaskConfig(),
    hard_config: HardMaskConfig = HardMaskConfig(),
) -> np.ndarray:
    """SxSx3 uint8 RGB + 68x2 aligned-crop landmarks → SxS bool neck mask, through the seed's 512 px steps."""
    region = neck_or_low_skin_from_landmarks(aligned_rgb, landmarks68, config)
    return hard_mask_from_landmark_region(region, landmarks68, config, hard_config)


def hard_mask_from_landmark_region(
    region: np.ndarray, landmarks68: np.ndarray, config: LandmarkMaskConfig, hard_config: HardMaskConfig
) -> np.ndarray:
    """The fallback's SxS bool region → the seed's 512 px steps (jaw lifted as in the region) → SxS bool."""
    side = region.shape[0]
    region_512 = cv2.resize(region.astype(np.uint8), (PARSE_SIDE, PARSE_SIDE), interpolation=cv2.INTER_NEAREST) > 0
    jaw_512 = jaw_polygon(lifted_jaw(landmarks68, side, config) * PARSE_SIDE / side, region_512.shape)
    return upsample_mask(seed_hard_mask_512(region_512, jaw_512, hard_config), side)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """HxW bool → the same with every region not reachable from the border set."""
    flood = np.pad(mask, 1).astype(np.uint8)  # the frame connects every outside region to (0, 0)
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


def scaled_kernel_size(size_at_1024: int, side: int) -> int:
    """A kernel size given at 1024 px, for a side of `side` px (at least 1)."""
    return max(1, round(size_at_1024 * side / REFERENCE_SIDE))


def soft_neck_mask(neck_mask: np.ndarray, config: SoftMaskConfig = SoftMaskConfig()) -> np.ndarray:
    """SxS bool → SxS float32 in [0, 1], as `main_diffuse.py` builds it: the 0/255 mask dilated, box-blurred
    in uint8, and kept at 255 on the hard mask; then divided by 255."""
    side = neck_mask.shape[0]
    dilate = scaled_kernel_size(config.dilate_at_1024, side)
    blur = scaled_kernel_size(config.blur_at_1024, side)
    hard = neck_mask.astype(np.uint8) * 255
    blurred = cv2.blur(cv2.dilate(hard, np.ones((dilate, dilate), np.uint8)), (blur, blur))
    return np.where(neck_mask, 255, blurred).astype(np.float32) / 255.0


def neck_masks(
    aligned_rgb: np.ndarray,
    landmarks68: np.ndarray,
    parser: nn.Module | None,
    soft_config: SoftMaskConfig = SoftMaskConfig(),
    landmark_config: LandmarkMaskConfig = LandmarkMaskConfig(),
    hard_config: HardMaskConfig = HardMaskConfig(),
) -> NeckMasks:
    """The stage: parsing when a parser is given and it finds a neck, else the landmark fallback."""
    side = aligned_rgb.shape[0]
    if parser is not None:
        class_map = parse_face(parser, aligned_rgb)
        if neck_mask_from_parsing(class_map).any():
            landmarks_512 = landmarks68 * PARSE_SIDE / side
            region = neck_or_low_skin_from_parsing(class_map, landmarks_512)
            hard_512 = seed_hard_mask_512(region, jaw_polygon(landmarks_512, class_map.shape), hard_config)
            neck = upsample_mask(hard_512, side)
            face_region = upsample_mask(face_region_from_parsing(class_map), side)
            neck_region = upsample_mask(neck_mask_from_parsing(class_map), side)
            soft = soft_neck_mask(neck, soft_config)
            return NeckMasks(neck, soft, face_region, neck_region, MaskSource.PARSING, class_map)
    region = neck_or_low_skin_from_landmarks(aligned_rgb, landmarks68, landmark_config)
    neck = hard_mask_from_landmark_region(region, landmarks68, landmark_config, hard_config)
    face_region = face_region_from_landmarks(landmarks68, aligned_rgb.shape[:2])
    return NeckMasks(neck, soft_neck_mask(neck, soft_config), face_region, region, MaskSource.LANDMARKS)
