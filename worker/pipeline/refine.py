"""Refine stage: put the edited generation's neck into the aligned original without seams.

Three methods, one contract: every pixel where the soft mask D is 0 is the original's, exactly.
- `refine_diffuse` (quality): re-synthesise the neck so that it fits the unchanged face. Start
  from the ORIGINAL code and fit, with Adam, a target that is the original outside the neck
  mask M and the edited generation inside it: pixel MSE only outside D, plus a small perceptual
  term on the whole target. Result: original * (1 - D) + G(w*) * D.
- `refine_warp` (speed): a piecewise-affine warp moves the edited generation's jaw contour onto
  the original's at a few rows, then the blend under D. No optimisation.
- `refine_none`: the blend under D alone.

Images are SxSx3 uint8 RGB aligned crops; masks SxS (bool M, float32 D in [0, 1]); codes
1 x num_ws x w_dim float32 numpy arrays (as the invert and edit stages hand them over).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
import torch
from scipy.spatial import Delaunay

from worker.pipeline.invert import (
    PerceptualLoss,
    ProgressCallback,
    perceptual_input,
    rgb_from_images,
    targets_from_rgb,
)


@dataclass(frozen=True)
class DiffuseConfig:
    """The seed's defaults: 100 Adam steps at lr 0.01, perceptual weight 1e-4.

    The pixel term is blind inside the soft mask, so the perceptual term alone carries the edited
    neck into the result. The seed's 1e-4 weighted a raw VGG16 conv4_3 feature MSE (values in the
    hundreds or more); LPIPS distances are below about 1, so with LPIPS the same weight makes that
    term, and the edit, nearly vanish: calibrate it on real weights before relying on it.
    """

    steps: int = 100
    learning_rate: float = 0.01
    perceptual_weight: float = 1e-4

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class WarpConfig:
    """rows: contour rows matched on each side of the face. lower_face_fraction: the rows span
    from this fraction of the face region's height down to the higher of the two chins."""

    rows: int = 5
    lower_face_fraction: float = 0.5


@dataclass(frozen=True)
class RefineResult:
    """image: SxSx3 uint8 RGB, the refined crop. wp: 1 x num_ws x w_dim float32, the diffuse's
    optimised code (None for warp and none). losses: per-step total loss (diffuse only)."""

    image: np.ndarray
    wp: np.ndarray | None = None
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))


class PointPairs(NamedTuple):
    """Kx2 float64 (x, y) points of the image to warp and where each must land."""

    source: np.ndarray
    target: np.ndarray


def blend_under_mask(inner_rgb: np.ndarray, outer_rgb: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """outer * (1 - D) + inner * D, rounded to uint8; exactly `outer` wherever D is 0."""
    weight = soft_mask.astype(np.float32)[..., None]
    blended = outer_rgb.astype(np.float32) * (1.0 - weight) + inner_rgb.astype(np.float32) * weight
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where(weight > 0, blended, outer_rgb)


def refine_none(edited_rgb: np.ndarray, original_rgb: np.ndarray, soft_mask: np.ndarray) -> RefineResult:
    return RefineResult(blend_under_mask(edited_rgb, original_rgb, soft_mask))


def diffuse_target(edited_rgb: np.ndarray, original_rgb: np.ndarray, neck_mask: np.ndarray) -> np.ndarray:
    """SxSx3 uint8: the edited generation inside the neck mask, the original elsewhere."""
    return np.where(neck_mask[..., None], edited_rgb, original_rgb)


def refine_diffuse(
    G: torch.nn.Module,
    original_wp: np.ndarray,
    edited_rgb: np.ndarray,
    original_rgb: np.ndarray,
    neck_mask: np.ndarray,
    soft_mask: np.ndarray,
    perceptual_loss: PerceptualLoss,
    config: DiffuseConfig = DiffuseConfig(),
    progress: ProgressCallback | None = None,
) -> RefineResult:
    """Re-synthesise the neck from the original code (see the module docstring).

    G: StyleGAN2 generator in eval mode (receives no gradients); crops are S = G.img_resolution.
    perceptual_loss: LPIPS (or any metric with `features`/`distance`), on G's device, frozen.
    progress(step, steps, losses) after each step, losses a 1-element float64 array.
    """
    device = G.w_avg.device
    side = G.img_resolution
    if edited_rgb.shape != (side, side, 3) or original_rgb.shape != (side, side, 3):
        raise ValueError(f"crops must be {side}x{side}x3 for this generator, got {edited_rgb.shape}, {original_rgb.shape}")
    start = torch.as_tensor(original_wp, dtype=torch.float32, device=device)
    if tuple(start.shape) != (1, G.num_ws, G.w_dim):
        raise ValueError(f"original_wp must be 1 x {G.num_ws} x {G.w_dim}, got {tuple(start.shape)}")

    target = targets_from_rgb([diffuse_target(edited_rgb, original_rgb, neck_mask)], device)
    outside = torch.from_numpy(1.0 - soft_mask.astype(np.float32)).to(device)[None, None]
    with torch.no_grad():
        target_features = perceptual_loss.features(perceptual_input(target))

    code = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([code], lr=config.learning_rate)
    losses = np.zeros(config.steps)
    for step in range(config.steps):
        images = G.synthesis(code, noise_mode="const").float()
        loss = ((images - target).square() * outside).mean()
        if config.perceptual_weight > 0:
            features = perceptual_loss.features(perceptual_input(images))
            loss = loss + config.perceptual_weight * perceptual_loss.distance(features, target_features).sum()
        # grad w.r.t. the code only: G's parameters are shared with other jobs and stay untouched
        (code.grad,) = torch.autograd.grad(loss, [code])
        optimizer.step()
        losses[step] = float(loss.detach())
        if progress is not None:
            progress(step + 1, config.steps, losses[step : step + 1].copy())

    with torch.no_grad():
        resynthesised = rgb_from_images(G.synthesis(code, noise_mode="const"))[0]
    image = blend_under_mask(resynthesised, original_rgb, soft_mask)
    return RefineResult(image, code.detach().cpu().numpy().astype(np.float32), losses)


def region_side_edges(region: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SxS bool region, K int rows → (K float64 leftmost, K float64 rightmost) column of the
    region on each row; NaN on rows where it is empty."""
    left = np.full(len(rows), np.nan)
    right = np.full(len(rows), np.nan)
    for index, row in enumerate(rows):
        columns = np.flatnonzero(region[row])
        if columns.size:
            left[index], right[index] = columns[0], columns[-1]
    return left, right


def jaw_contour_pairs(
    original_face_region: np.ndarray, edited_face_region: np.ndarray, config: WarpConfig = WarpConfig()
) -> PointPairs:
    """Where the edited face's side contour must move to sit on the original's, at a few rows.

    Rows run from `lower_face_fraction` down the face to just above the higher of the two
    chins (the chin tip itself is left out: there the two sides meet and the edit's new chin
    line must stay). Each row gives a left and a right pair; the point halfway between the
    edited sides is pinned so the warp fades out towards the middle of the face.
    """
    occupied = [np.flatnonzero(region.any(axis=1)) for region in (original_face_region, edited_face_region)]
    if any(rows.size == 0 for rows in occupied):
        return PointPairs(np.zeros((0, 2)), np.zeros((0, 2)))
    top = max(rows[0] for rows in occupied)
    bottom = min(rows[-1] for rows in occupied)
    first = top + config.lower_face_fraction * (bottom - top)
    rows = np.unique(np.round(np.linspace(first, bottom, config.rows + 1)[:-1]).astype(int))
    original_left, original_right = region_side_edges(original_face_region, rows)
    edited_left, edited_right = region_side_edges(edited_face_region, rows)
    found = ~np.isnan(original_left + edited_left)
    y = rows[found].astype(np.float64)
    middle = (edited_left[found] + edited_right[found]) / 2.0
    source_x = np.concatenate([edited_left[found], edited_right[found], middle])
    target_x = np.concatenate([original_left[found], original_right[found], middle])
    row_y = np.tile(y, 3)
    source = np.stack([source_x, row_y], axis=1)
    target = np.stack([target_x, row_y], axis=1)
    return PointPairs(source, target)


def border_anchors(height: int, width: int, per_side: int = 4) -> np.ndarray:
    """Nx2 points spread along the image border (corners included): they stay put in a warp."""
    xs = np.linspace(0, width - 1, per_side + 1)
    ys = np.linspace(0, height - 1, per_side + 1)
    points = [(x, 0.0) for x in xs] + [(x, height - 1.0) for x in xs]
    points += [(0.0, y) for y in ys[1:-1]] + [(width - 1.0, y) for y in ys[1:-1]]
    return np.array(points, dtype=np.float64)


def piecewise_affine_map(shape: tuple[int, int], pairs: PointPairs) -> tuple[np.ndarray, np.ndarray]:
    """The backward map (HxW float32 map_x, map_y, for cv2.remap) of the piecewise-affine warp
    that carries each source point onto its target and keeps the image border in place.

    Triangles: a Delaunay triangulation of the targets (and border anchors); inside each, an
    output pixel is read from the same barycentric position in the source triangle.
    """
    height, width = shape
    anchors = border_anchors(height, width)
    target = np.concatenate([pairs.target, anchors])
    source = np.concatenate([pairs.source, anchors])
    # a target given twice (or on an anchor) would leave Delaunay to pick one of two sources
    _, first_index = np.unique(np.round(target, 3), axis=0, return_index=True)
    keep = np.sort(first_index)
    target, source = target[keep], source[keep]

    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    moved = np.flatnonzero(np.any(np.abs(source - target) > 1e-9, axis=1))
    triangles = Delaunay(target).simplices if moved.size else np.zeros((0, 3), int)
    # only triangles with a moving corner differ from the identity
    triangles = triangles[np.isin(triangles, moved).any(axis=1)]
    affines = np.stack([target_to_source_affine(target[t], source[t]) for t in triangles] + [identity])

    # which triangle each output pixel lies in, rasterised (far faster than a point-location query);
    # the last index, the identity, is everywhere else
    labels = np.full((height, width), len(triangles), np.int32)
    for index, corners in enumerate(target[triangles]):
        cv2.fillConvexPoly(labels, np.round(corners * 16).astype(np.int32), index, shift=4)
    coefficients = affines.reshape(-1, 6).astype(np.float32)[labels]
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    map_x = coefficients[..., 0] * x + coefficients[..., 1] * y + coefficients[..., 2]
    map_y = coefficients[..., 3] * x + coefficients[..., 4] * y + coefficients[..., 5]
    return map_x, map_y


def target_to_source_affine(target_triangle: np.ndarray, source_triangle: np.ndarray) -> np.ndarray:
    """3x2 target corners, 3x2 source corners → the 2x3 affine matrix taking the first onto the second."""
    homogeneous = np.concatenate([target_triangle, np.ones((3, 1))], axis=1)
    return np.linalg.solve(homogeneous, source_triangle).T


def piecewise_affine_warp(image: np.ndarray, pairs: PointPairs) -> np.ndarray:
    """HxW[xC] image warped so that what was at each source point is at its target point."""
    map_x, map_y = piecewise_affine_map(image.shape[:2], pairs)
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def refine_warp(
    edited_rgb: np.ndarray,
    original_rgb: np.ndarray,
    original_face_region: np.ndarray,
    edited_face_region: np.ndarray,
    soft_mask: np.ndarray,
    config: WarpConfig = WarpConfig(),
) -> RefineResult:
    """Warp the edited generation's jaw contour onto the original's, then blend under D.

    The face regions (SxS bool) come from parsing each crop (`masks.face_region_from_parsing`)
    or from its landmarks (`masks.face_region_from_landmarks`). Regions with no rows in common
    leave nothing to match: the result is then `refine_none`'s.
    """
    pairs = jaw_contour_pairs(original_face_region, edited_face_region, config)
    warped = piecewise_affine_warp(edited_rgb, pairs)
    return RefineResult(blend_under_mask(warped, original_rgb, soft_mask))
