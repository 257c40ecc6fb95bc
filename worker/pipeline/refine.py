"""Refine stage: put the edited generation's neck into the aligned original without seams.

Three methods, one contract: every pixel where the soft mask D is 0 is the original's, exactly.
- `refine_diffuse` (quality): the seed's `mask_diffuse` (`CHINGER_inverter.py`, run by `main_diffuse.py`).
  Re-synthesise the neck so that it fits the unchanged face: start from the ORIGINAL code and fit, with
  Adam over the whole W+ code, a target that is the original outside the hard neck mask M and the edited
  generation inside it: pixel MSE weighted by (1 - D), plus 1e-4 x the mean squared difference of the
  seed's VGG16 relu4_3 features of the two images average-pooled to 256 px. Result: original * (1 - D) + G(w*) * D.
- `refine_warp` (speed): the seed's `warp_img` (`warp/warpper.py`, `warp/utils.py`, run by `main_warp.py`).
  The two faces' side contours are sampled at 5 rows of a band between the ear and the chin; the
  edited points are pushed 1.2x further from the original's, then the edited generation is morphed half
  way (triangles of a Delaunay mesh over those points, the neck's contour points and a fixed inner grid),
  then blended under the warp's own soft mask. No optimisation.
- `refine_none`: the blend under D alone.

Images are SxSx3 uint8 RGB aligned crops; masks SxS (bool M, float32 D in [0, 1]); codes
1 x num_ws x w_dim float32 numpy arrays (as the invert and edit stages hand them over).

The diffuse loop runs N crops at once (`refine_diffuse_crops`: the GPU batcher stacks concurrent jobs' crops), and
its step is capture-ready: it reads nothing back and writes its losses at a device step counter, so on CUDA one step
is captured as a CUDA graph and replayed (`worker.pipeline.steps`, `CHINFIX_CAPTURE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import Delaunay

from chinfix.settings import Settings
from worker.pipeline.invert import Precision, autocast, rgb_from_images, step_optimizer, targets_from_rgb
from worker.pipeline import steps as step_loop
from worker.pipeline.steps import Capture, ProgressCallback

DIFFUSE_FEATURE_RESOLUTION = 256
"""The seed average-pools both 1024 px images to 256x256 before its perceptual model (`AdaptiveAvgPool2d`);
smaller generators' images are pooled no further than their own size (never upsampled)."""

_DEFAULTS = Settings.model_fields


@dataclass(frozen=True)
class DiffuseConfig:
    """The seed's defaults (read from the settings, their one place): 100 Adam steps at lr 0.01,
    perceptual weight 1e-4 on the seed's raw VGG16 relu4_3 feature MSE. The seed's training pairs
    (`remove_double_chin_step2.py`) use weight 5e-5 (`TRAINING_DIFFUSE`).

    The pixel term is blind inside the soft mask, so the perceptual term alone carries the edited
    neck into the result.
    """

    steps: int = _DEFAULTS["diffuse_steps"].default
    learning_rate: float = _DEFAULTS["diffuse_lr"].default
    perceptual_weight: float = _DEFAULTS["diffuse_perceptual_weight"].default
    precision: Precision = "fp32"
    """"bf16": generator and VGG under bfloat16 autocast (the code, Adam state and loss stay float32)."""
    capture: Capture = _DEFAULTS["capture"].default
    """"auto": on CUDA, one step captured as a CUDA graph and replayed; "off": eager (`worker.pipeline.steps`)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        step_loop.check_capture(self.capture)
        if self.perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {self.perceptual_weight}")


TRAINING_DIFFUSE = DiffuseConfig(perceptual_weight=5e-5)


@dataclass(frozen=True)
class WarpConfig:
    """The seed's warp: `rows` contour rows per side (its point_pair_num), the edited face points pushed
    `push` times their offset from the original's, the morph `morph` of the way (its alpha), and an inner
    grid of `grid_cells` cells a side (its sample_num) anchoring the mesh."""

    rows: int = 5
    push: float = 1.2
    morph: float = 0.5
    grid_cells: int = 4


@dataclass(frozen=True)
class WarpRegions:
    """What the warp reads of one crop: `face` (SxS bool, skin and features: the parser's face classes, or
    the landmark outline) and `neck` (SxS bool, the parser's neck class, or the fallback's neck region)."""

    face: np.ndarray
    neck: np.ndarray


@dataclass(frozen=True)
class RefineResult:
    """image: SxSx3 uint8 RGB, the refined crop. wp: 1 x num_ws x w_dim float32, the diffuse's
    optimised code (None for warp and none). losses: per-step total loss (diffuse only)."""

    image: np.ndarray
    wp: np.ndarray | None = None
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))


class PointPairs(NamedTuple):
    """Kx2 (x, y) points: where each lies in the original (`original`) and in the edited image (`edited`)."""

    original: np.ndarray
    edited: np.ndarray


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


def diffuse_features(perceptual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The seed's perceptual features of Nx3xSxS images in [-1, 1]: average-pooled to 256 px first."""
    return perceptual(F.adaptive_avg_pool2d(images, min(DIFFUSE_FEATURE_RESOLUTION, images.shape[-1])))


@dataclass(frozen=True)
class DiffuseCrop:
    """One crop's diffuse inputs: original_wp 1 x num_ws x w_dim float32 (the start), edited_rgb and original_rgb
    SxSx3 uint8 RGB, neck_mask SxS bool (M), soft_mask SxS float32 (D)."""

    original_wp: np.ndarray
    edited_rgb: np.ndarray
    original_rgb: np.ndarray
    neck_mask: np.ndarray
    soft_mask: np.ndarray


def refine_diffuse(
    G: torch.nn.Module,
    original_wp: np.ndarray,
    edited_rgb: np.ndarray,
    original_rgb: np.ndarray,
    neck_mask: np.ndarray,
    soft_mask: np.ndarray,
    perceptual: torch.nn.Module,
    config: DiffuseConfig = DiffuseConfig(),
    progress: ProgressCallback | None = None,
) -> RefineResult:
    """Re-synthesise the neck from the original code (see the module docstring).

    G: StyleGAN2 generator in eval mode (receives no gradients), or a `FixedNoiseGenerator` view of one; crops are
    S = G.img_resolution. perceptual: images in [-1, 1] → features (the seed's VGG16 relu4_3,
    `SeedPerceptualVGG16`), on G's device, frozen. progress(step, steps, losses) after each step, losses a 1-element
    float32 tensor on the device (reading it waits for the device).
    """
    crop = DiffuseCrop(original_wp, edited_rgb, original_rgb, neck_mask, soft_mask)
    return refine_diffuse_crop(G, crop, perceptual, config, progress)


def refine_diffuse_crop(
    G: torch.nn.Module,
    crop: DiffuseCrop,
    perceptual: torch.nn.Module,
    config: DiffuseConfig = DiffuseConfig(),
    progress: ProgressCallback | None = None,
) -> RefineResult:
    """`refine_diffuse` of one `DiffuseCrop` (the pipeline's diffuser: `ModelRegistry.diffuser`)."""
    return refine_diffuse_crops(G, [crop], perceptual, config, progress)[0]


def refine_diffuse_crops(
    G: torch.nn.Module,
    crops: Sequence[DiffuseCrop],
    perceptual: torch.nn.Module,
    config: DiffuseConfig = DiffuseConfig(),
    progress: ProgressCallback | None = None,
) -> list[RefineResult]:
    """`refine_diffuse` of N crops at once, each with its own code, target and masks. G's noise (a
    `FixedNoiseGenerator`'s maps) is 1 or N per layer. The batch loss is the SUM of the crops' losses, each exactly its
    loss alone, and Adam works element by element: each crop follows its single run (up to the rounding of batched
    convolutions). progress(step, steps, losses): losses N float32 on the device."""
    loop = DiffuseSteps.start(G, crops, perceptual, config)
    step_loop.run_steps(loop.step, loop.losses, progress, config.capture)
    with torch.no_grad():
        resynthesised = rgb_from_images(G.synthesis(loop.codes, noise_mode="const"))
    codes = loop.codes.detach().cpu().numpy().astype(np.float32)
    losses = loop.losses.double().cpu().numpy()
    return [
        RefineResult(blend_under_mask(image, crop.original_rgb, crop.soft_mask), codes[row : row + 1], losses[:, row])
        for row, (crop, image) in enumerate(zip(crops, resynthesised, strict=True))
    ]


@dataclass
class DiffuseSteps:
    """The state of one diffuse run of N crops and its step (see `worker.pipeline.steps`).

    codes: N x num_ws x w_dim float32 leaf; targets: Nx3xSxS in [-1, 1]; outside: Nx1xSxS, 1 - D;
    target_features: the targets' perceptual features (None without the perceptual term); counter: the device step
    counter; losses: steps x N float32, each step's loss of each crop.
    """

    G: torch.nn.Module
    perceptual: torch.nn.Module
    config: DiffuseConfig
    targets: torch.Tensor
    outside: torch.Tensor
    target_features: torch.Tensor | None
    codes: torch.Tensor
    optimizer: torch.optim.Adam
    counter: torch.Tensor
    losses: torch.Tensor

    @classmethod
    def start(
        cls, G: torch.nn.Module, crops: Sequence[DiffuseCrop], perceptual: torch.nn.Module, config: DiffuseConfig
    ) -> DiffuseSteps:
        device = G.w_avg.device
        side = G.img_resolution
        for crop in crops:
            if crop.edited_rgb.shape != (side, side, 3) or crop.original_rgb.shape != (side, side, 3):
                raise ValueError(
                    f"crops must be {side}x{side}x3 for this generator, got {crop.edited_rgb.shape}, {crop.original_rgb.shape}"
                )
            if tuple(crop.original_wp.shape) != (1, G.num_ws, G.w_dim):
                raise ValueError(f"original_wp must be 1 x {G.num_ws} x {G.w_dim}, got {tuple(crop.original_wp.shape)}")
        starts = np.concatenate([np.asarray(crop.original_wp, dtype=np.float32) for crop in crops])
        target_rgb = [diffuse_target(crop.edited_rgb, crop.original_rgb, crop.neck_mask) for crop in crops]
        targets = targets_from_rgb(target_rgb, device)
        outside_masks = np.stack([1.0 - crop.soft_mask.astype(np.float32) for crop in crops])[:, None]
        outside = torch.from_numpy(outside_masks).to(device)
        target_features = None
        if config.perceptual_weight > 0:
            with torch.no_grad(), autocast(device, config.precision):
                target_features = diffuse_features(perceptual, targets).float()
        codes = torch.from_numpy(starts).to(device).requires_grad_(True)
        # lr a device tensor and Adam capturable on CUDA, losses kept on the device: a step reads nothing back
        optimizer = step_optimizer([codes], torch.tensor(config.learning_rate, device=device))
        losses = torch.empty((config.steps, len(crops)), device=device)
        counter = step_loop.step_counter(device)
        return cls(G, perceptual, config, targets, outside, target_features, codes, optimizer, counter, losses)

    def step(self) -> None:
        """One diffuse step; its losses go to row `counter` (read on the device)."""
        with autocast(self.counter.device, self.config.precision):
            images = self.G.synthesis(self.codes, noise_mode="const").float()
            features = diffuse_features(self.perceptual, images).float() if self.target_features is not None else None
        loss = per_crop_mean(((self.targets - images) * self.outside).square())
        if features is not None:
            loss = loss + self.config.perceptual_weight * per_crop_mean((self.target_features - features).square())
        step_loop.set_gradients(loss.sum(), [self.codes])
        self.optimizer.step()
        step_loop.record_loss(self.losses, self.counter, loss)


def per_crop_mean(values: torch.Tensor) -> torch.Tensor:
    """N x ... → N: the mean of each crop's values."""
    return values.flatten(1).mean(dim=1)


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


def contour_pairs(original_region: np.ndarray, edited_region: np.ndarray, rows: int) -> tuple[PointPairs, PointPairs]:
    """The seed's `get_point`: `rows` rows evenly spaced from the lower of the two regions' top rows to the
    higher of their bottom rows (the last one left out), and on each the leftmost and rightmost columns of
    each region. Returns (left side pairs, right side pairs), Kx2 (x, y). Rows where either region is
    empty are skipped (the seed would fail on them)."""
    occupied = [np.flatnonzero(region.any(axis=1)) for region in (original_region, edited_region)]
    if any(found.size == 0 for found in occupied):
        empty = PointPairs(np.zeros((0, 2)), np.zeros((0, 2)))
        return empty, empty
    top = max(found[0] for found in occupied)
    bottom = min(found[-1] for found in occupied)
    sampled = np.linspace(top, bottom, rows + 1).astype(np.int64)[:-1]
    original_left, original_right = region_side_edges(original_region, sampled)
    edited_left, edited_right = region_side_edges(edited_region, sampled)
    found = ~np.isnan(original_left + edited_left)
    y = sampled[found].astype(np.float64)

    def points(x: np.ndarray) -> np.ndarray:
        return np.stack([x[found], y], axis=1)

    left = PointPairs(points(original_left), points(edited_left))
    right = PointPairs(points(original_right), points(edited_right))
    return left, right


def warp_band(landmarks68: np.ndarray, side: int) -> tuple[np.ndarray, int]:
    """The seed's `get_warpping_mask` from the original's landmarks (68x2, in crop pixels), at 512 px as
    there: (SxS bool rows from the lower ear point (0, 16) down to above the higher of points 7 and 10,
    the chin point's row at S px)."""
    at_512 = landmarks68 * 512 / side
    band = np.zeros((512, 512), np.uint8)
    band[int(max(at_512[0, 1], at_512[16, 1])) : int(min(at_512[7, 1], at_512[10, 1]))] = 255
    # the seed scales its 0/255 band up bilinearly and keeps only full-weight rows
    band_full = cv2.resize(band, (side, side), interpolation=cv2.INTER_LINEAR) == 255
    return band_full, int(int(at_512[8, 1]) / 512 * side)


def seed_warp_points(
    original: WarpRegions, edited: WarpRegions, landmarks68: np.ndarray, config: WarpConfig = WarpConfig()
) -> PointPairs:
    """The seed's point pairs: the face contours in the band (edited points pushed `config.push` times their
    offset), and the edited neck's contour below the chin on both sides (the same in both images: anchors).
    Kx2 int64 (x, y), truncated to whole pixels as the seed does."""
    side = original.face.shape[0]
    band, chin_row = warp_band(landmarks68, side)
    face_left, face_right = contour_pairs(original.face & band, edited.face & band, config.rows)
    below_chin = np.arange(side)[:, None] >= chin_row
    neck_left, neck_right = contour_pairs(original.neck & below_chin, edited.neck & below_chin, config.rows)

    def pushed(pairs: PointPairs) -> np.ndarray:
        return pairs.original + (pairs.edited - pairs.original) * config.push

    original_points = [face_left.original, neck_left.edited, neck_right.edited, face_right.original]
    edited_points = [pushed(face_left), neck_left.edited, neck_right.edited, pushed(face_right)]
    return PointPairs(
        np.concatenate(original_points).astype(np.int64), np.concatenate(edited_points).astype(np.int64)
    )


def seed_mesh_anchors(side: int, cells: int = 4) -> np.ndarray:
    """The seed's fixed mesh points (`get_tris`): the corners and edge midpoints of the image, the point a
    quarter down its centre line, and a ring of grid points one half-cell inside the border. Nx2 float64."""
    last = side - 1
    step = side / cells / 2
    anchors = [(0, 0), (side // 2, 0), (last, 0), (last, side // 2), (last, last), (side // 2, last), (0, last), (0, side // 2)]
    anchors.append((side / 2, side / cells))
    skipped = (cells - 1, cells, cells + 1)
    for index in range(1, cells * 2):
        if index not in skipped:
            anchors += [(step * index, step), (step * index, step * (cells * 2 - 1))]
    for index in range(2, cells * 2 - 1):
        anchors += [(step, step * index), (step * (cells * 2 - 1), step * index)]
    return np.array(anchors, dtype=np.float64)


def target_to_source_affine(target_triangle: np.ndarray, source_triangle: np.ndarray) -> np.ndarray:
    """3x2 target corners, 3x2 source corners → the 2x3 affine matrix taking the first onto the second."""
    homogeneous = np.concatenate([target_triangle, np.ones((3, 1))], axis=1)
    return np.linalg.solve(homogeneous, source_triangle).T


def triangle_warp_map(
    shape: tuple[int, int], source: np.ndarray, target: np.ndarray, triangles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The backward map (HxW float32 map_x, map_y, for cv2.remap) that fills each target triangle (Kx3 indices
    into the Nx2 `target` points) with the matching `source` triangle. Triangles are painted in order, later
    ones over earlier ones; pixels under none, and degenerate triangles, read the same pixel of the source."""
    height, width = shape
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    affines = [identity]
    labels = np.zeros((height, width), np.int32)
    for corners in triangles:
        target_triangle, source_triangle = target[corners].astype(np.float64), source[corners].astype(np.float64)
        if abs(np.linalg.det(np.concatenate([target_triangle, np.ones((3, 1))], axis=1))) < 1e-9:
            continue
        affines.append(target_to_source_affine(target_triangle, source_triangle))
        cv2.fillConvexPoly(labels, np.round(target_triangle * 16).astype(np.int32), len(affines) - 1, shift=4)
    coefficients = np.stack(affines).reshape(-1, 6).astype(np.float32)[labels]
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    map_x = coefficients[..., 0] * x + coefficients[..., 1] * y + coefficients[..., 2]
    map_y = coefficients[..., 3] * x + coefficients[..., 4] * y + coefficients[..., 5]
    return map_x, map_y


def seed_morph(edited_rgb: np.ndarray, pairs: PointPairs, config: WarpConfig = WarpConfig()) -> np.ndarray:
    """The seed's partial morph (`warp`): a Delaunay mesh over the fixed anchors and the ORIGINAL-side
    points; each triangle of the edited image (at the edited-side points) is moved to where the points lie
    `config.morph` of the way from their edited to their original positions. SxSx3 uint8 in and out."""
    side = edited_rgb.shape[0]
    anchors = seed_mesh_anchors(side, config.grid_cells)
    original = np.concatenate([anchors, pairs.original]).astype(np.int64)
    edited = np.concatenate([anchors, pairs.edited]).astype(np.int64)
    between = ((1 - config.morph) * original + config.morph * edited).astype(np.int64)
    triangles = Delaunay(np.concatenate([anchors, pairs.original])).simplices
    map_x, map_y = triangle_warp_map(edited_rgb.shape[:2], edited, between, triangles)
    return cv2.remap(edited_rgb, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def refine_warp(
    edited_rgb: np.ndarray,
    original_rgb: np.ndarray,
    original: WarpRegions,
    edited: WarpRegions,
    landmarks68: np.ndarray,
    soft_mask: np.ndarray,
    config: WarpConfig = WarpConfig(),
) -> RefineResult:
    """The seed's warp refinement: morph the edited generation's jaw towards the original's, blend under D.

    landmarks68: the original crop's 68 landmarks (crop pixels); soft_mask: the warp's own soft mask
    (`masks.WARP_HARD_MASK` and `masks.WARP_SOFT_MASK`). Regions with no rows in common give no contour
    points: the mesh then holds still and the result is `refine_none`'s.
    """
    pairs = seed_warp_points(original, edited, landmarks68, config)
    return RefineResult(blend_under_mask(seed_morph(edited_rgb, pairs, config), original_rgb, soft_mask))
