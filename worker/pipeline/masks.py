"""Neck mask stage: where the edited generation may replace the aligned original.

Two sources, same outputs: face parsing (BiSeNet, class 14 = neck) when its weights are
loaded, otherwise the 68 landmarks (the region below the jaw line that has the colour of
the cheeks). All images are SxSx3 uint8 RGB aligned crops; masks are SxS.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
import torch
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

# 68-point (iBUG 300-W) indices
JAW = slice(0, 17)
LOWER_JAW = slice(4, 13)  # the part of the jaw line the neck hangs from (no ears or temples beside it)
BROWS_RIGHT_TO_LEFT = slice(26, 16, -1)  # walking back over the brows closes the jaw line into a face outline
CHIN = 8
LEFT_CHEEK = (1, 2, 3, 4, 48, 31)
RIGHT_CHEEK = (15, 14, 13, 12, 54, 35)

REFERENCE_SIDE = 1024  # the seed's kernel sizes are given for 1024x1024 crops


class MaskSource(StrEnum):
    PARSING = "parsing"
    LANDMARKS = "landmarks"


@dataclass(frozen=True)
class SoftMaskConfig:
    """Kernel sizes at 1024x1024; other resolutions scale them (at least 1 px)."""

    dilate_at_1024: int = 30
    blur_at_1024: int = 35


@dataclass(frozen=True)
class LandmarkMaskConfig:
    """The landmark fallback's skin-colour test and shape limits, in resolution-free units."""

    max_colour_distance: float = 3.0  # Mahalanobis distance in (r, g) chromaticity from the cheeks'
    min_chromaticity_std: float = 0.01  # floors the cheeks' spread so an evenly lit face still admits shading
    min_brightness_fraction: float = 0.2  # darker than this (of the cheeks) is too dark to judge
    smoothing_fraction: float = 1 / 256  # Gaussian sigma as a fraction of S; JPEG chroma is blocky
    depth_fraction: float = 0.5  # the mask reaches at most this many jaw widths below the chin


@dataclass(frozen=True)
class NeckMasks:
    """The neck mask stage's result.

    neck_mask: SxS bool; soft_mask: SxS float32 in [0, 1] (1 on the neck); face_region: SxS bool
    (face skin and features, the warp's contour source); source: where they came from.
    """

    neck_mask: np.ndarray
    soft_mask: np.ndarray
    face_region: np.ndarray
    source: MaskSource


def parse_face(parser: nn.Module, aligned_rgb: np.ndarray) -> np.ndarray:
    """SxSx3 uint8 RGB → SxS uint8 map of CelebAMask-HQ classes (see FaceClass)."""
    side_in = aligned_rgb.shape[0]
    interpolation = cv2.INTER_AREA if side_in > INPUT_SIZE else cv2.INTER_LINEAR
    resized = cv2.resize(aligned_rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)
    parameter = next(parser.parameters())
    image = torch.from_numpy(resized).to(device=parameter.device, dtype=torch.float32)
    image = image.permute(2, 0, 1).unsqueeze(0) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = parser((image - mean) / std)
    class_map = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
    return cv2.resize(class_map, (aligned_rgb.shape[1], side_in), interpolation=cv2.INTER_NEAREST)


def neck_mask_from_parsing(class_map: np.ndarray) -> np.ndarray:
    """SxS uint8 class map → SxS bool neck mask."""
    return class_map == FaceClass.NECK


def face_region_from_parsing(class_map: np.ndarray) -> np.ndarray:
    """SxS uint8 class map → SxS bool mask of the face's skin and features (no ears, hair or neck)."""
    return np.isin(class_map, np.array(FACE_CLASSES, dtype=np.uint8))


def fill_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nx2 (x, y) float polygon → HxW bool mask of its inside."""
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def face_region_from_landmarks(landmarks68: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """68x2 (x, y) landmarks → HxW bool face outline: the jaw line closed over the brows."""
    outline = np.concatenate([landmarks68[JAW], landmarks68[BROWS_RIGHT_TO_LEFT]])
    return fill_polygon(outline, shape)


def below_jaw_region(landmarks68: np.ndarray, shape: tuple[int, int], depth_fraction: float) -> np.ndarray:
    """HxW bool: under the lower jaw line (points 4-12), between the verticals through its two
    ends, down to `depth_fraction` jaw widths below the chin; never inside the jaw outline."""
    jaw = landmarks68[JAW]
    lower_jaw = landmarks68[LOWER_JAW]
    bottom = landmarks68[CHIN, 1] + depth_fraction * float(np.linalg.norm(jaw[-1] - jaw[0]))
    corners = [[lower_jaw[-1, 0], bottom], [lower_jaw[0, 0], bottom]]
    region = fill_polygon(np.concatenate([lower_jaw, corners]), shape)
    return region & ~fill_polygon(jaw, shape)


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


def neck_mask_from_landmarks(
    aligned_rgb: np.ndarray, landmarks68: np.ndarray, config: LandmarkMaskConfig = LandmarkMaskConfig()
) -> np.ndarray:
    """SxSx3 uint8 RGB + 68x2 aligned-crop landmarks → SxS bool neck mask.

    The skin-coloured part of the region below the jaw line that hangs from the jaw line
    itself (a skin-coloured background elsewhere is not connected to it), holes filled.
    """
    shape = aligned_rgb.shape[:2]
    below_jaw = below_jaw_region(landmarks68, shape, config.depth_fraction)
    candidate = (below_jaw & skin_colour_mask(aligned_rgb, landmarks68, config)).astype(np.uint8)
    side = shape[0]
    opening = max(3, round(side / 128)) | 1  # cuts thin bridges to a skin-coloured background
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, np.ones((opening, opening), np.uint8))

    jaw_band = np.zeros(shape, np.uint8)
    cv2.polylines(jaw_band, [np.round(landmarks68[LOWER_JAW]).astype(np.int32)], False, 1, thickness=opening * 2 + 1)
    _, labels = cv2.connectedComponents(candidate, connectivity=8)
    touching = np.unique(labels[(jaw_band > 0) & (candidate > 0)])
    neck = np.isin(labels, touching[touching > 0])
    return fill_holes(neck) & below_jaw


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
    """SxS bool → SxS float32 in [0, 1]: dilated then box-blurred, kept at exactly 1 on the neck."""
    side = neck_mask.shape[0]
    dilate = scaled_kernel_size(config.dilate_at_1024, side)
    blur = scaled_kernel_size(config.blur_at_1024, side)
    dilated = cv2.dilate(neck_mask.astype(np.uint8), np.ones((dilate, dilate), np.uint8))
    blurred = cv2.blur(dilated.astype(np.float32), (blur, blur), borderType=cv2.BORDER_REPLICATE)
    # the blur reaches past the dilation's margin, so it would dip below 1 at the neck's own edge
    return np.maximum(blurred, neck_mask.astype(np.float32))


def neck_masks(
    aligned_rgb: np.ndarray,
    landmarks68: np.ndarray,
    parser: nn.Module | None,
    soft_config: SoftMaskConfig = SoftMaskConfig(),
    landmark_config: LandmarkMaskConfig = LandmarkMaskConfig(),
) -> NeckMasks:
    """The stage: parsing when a parser is given and it finds a neck, else the landmark fallback."""
    shape = aligned_rgb.shape[:2]
    if parser is not None:
        class_map = parse_face(parser, aligned_rgb)
        neck = neck_mask_from_parsing(class_map)
        if neck.any():
            face_region = face_region_from_parsing(class_map)
            return NeckMasks(neck, soft_neck_mask(neck, soft_config), face_region, MaskSource.PARSING)
    neck = neck_mask_from_landmarks(aligned_rgb, landmarks68, landmark_config)
    face_region = face_region_from_landmarks(landmarks68, shape)
    return NeckMasks(neck, soft_neck_mask(neck, soft_config), face_region, MaskSource.LANDMARKS)
