"""Edit stage: move a W+ code across the fine double-chin boundary, judged by its chin score.

The fine boundary is one linear SVM per style layer: a unit normal n[k] and an intercept b[k].
The signed distance d[k] = w[k] . n[k] + b[k] is positive on the double-chin side. The edit
moves only the coarse layers (pose, jaw, face shape); the fine layers are copied back from the
original code, so the score is averaged over the edited layers only: the kept layers cannot
move and would only dilute it.

Pure numpy; every input is explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEPT_FINE_LAYERS: tuple[int, ...] = tuple(range(7, 18))
"""Layers the seed's diffuse refinement copies back from the original (the warp path keeps 6..17)."""

SEED_ALPHA = -5.0
"""The published method's fixed edit strength along the fine boundary."""

_UNIT_TOLERANCE = 1e-4


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class FineBoundary:
    """The fine boundary: `normals` num_ws x w_dim float32 unit vectors, `intercepts` num_ws float64."""

    normals: np.ndarray
    intercepts: np.ndarray

    def __post_init__(self) -> None:
        normals = np.asarray(self.normals, dtype=np.float32)
        intercepts = np.asarray(self.intercepts, dtype=np.float64)
        if normals.ndim != 2 or intercepts.shape != (normals.shape[0],):
            raise ValueError(
                f"fine boundary wants num_ws x w_dim normals and num_ws intercepts, got {normals.shape} and {intercepts.shape}"
            )
        lengths = np.linalg.norm(normals.astype(np.float64), axis=1)
        if np.abs(lengths - 1.0).max() > _UNIT_TOLERANCE:
            raise ValueError(f"fine boundary normals must be unit vectors, lengths range {lengths.min():.4f}..{lengths.max():.4f}")
        object.__setattr__(self, "normals", _read_only(normals))
        object.__setattr__(self, "intercepts", _read_only(intercepts))

    @property
    def num_ws(self) -> int:
        return self.normals.shape[0]


def load_fine_boundary(boundary_path: Path, intercept_path: Path) -> FineBoundary:
    """Read the published files: normals 1 x num_ws x w_dim float32, intercepts num_ws x 1 float64."""
    normals = np.load(boundary_path, allow_pickle=False)
    intercepts = np.load(intercept_path, allow_pickle=False)
    if normals.ndim == 3 and normals.shape[0] == 1:
        normals = normals[0]
    return FineBoundary(normals=normals, intercepts=intercepts.reshape(-1))


def load_pose_normal(path: Path) -> np.ndarray:
    """Read a W-space pose (yaw) boundary, 1 x w_dim or w_dim, as a w_dim float64 unit vector."""
    normal = np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
    return normal / np.linalg.norm(normal)


def edited_layers(num_ws: int, keep_layers: tuple[int, ...] = KEPT_FINE_LAYERS) -> tuple[int, ...]:
    """The style layers an edit moves: every layer not copied back from the original."""
    kept = set(keep_layers)
    return tuple(layer for layer in range(num_ws) if layer not in kept)


def _check_code(wp: np.ndarray, num_ws: int, w_dim: int) -> None:
    if wp.shape != (1, num_ws, w_dim):
        raise ValueError(f"expected one W+ code of shape (1, {num_ws}, {w_dim}), got {wp.shape}")


def double_chin_score(
    wp: np.ndarray, boundary: FineBoundary, layers: tuple[int, ...] | range = range(0, 7)
) -> tuple[np.ndarray, float]:
    """Signed distances of `wp` (1 x num_ws x w_dim) to the fine boundary.

    Returns (per-layer distances, num_ws float64; their mean over `layers`). Positive = double chin.
    """
    _check_code(wp, *boundary.normals.shape)
    per_layer = np.einsum("kd,kd->k", wp[0].astype(np.float64), boundary.normals.astype(np.float64))
    per_layer = per_layer + boundary.intercepts
    return per_layer, float(per_layer[list(layers)].mean())


def edit_wplus(
    wp: np.ndarray, direction: np.ndarray, alpha: float, keep_layers: tuple[int, ...] | range = KEPT_FINE_LAYERS
) -> np.ndarray:
    """`wp + alpha * direction` with the `keep_layers` copied back bit for bit from `wp`.

    wp: 1 x num_ws x w_dim float32; direction: num_ws x w_dim (one unit vector per layer).
    Returns a new 1 x num_ws x w_dim float32 code.
    """
    _check_code(wp, *direction.shape)
    edited = (wp.astype(np.float64) + alpha * direction.astype(np.float64)[None]).astype(np.float32)
    kept = list(keep_layers)
    edited[:, kept] = wp[:, kept]
    return edited


def pose_conditioned_direction(normals: np.ndarray, pose_normal: np.ndarray) -> np.ndarray:
    """Per layer, the chin normal with its component along the pose normal removed, renormalised.

    normals: num_ws x w_dim; pose_normal: w_dim (W-space, shared by every layer).
    Returns num_ws x w_dim float64 unit vectors orthogonal to `pose_normal`.
    """
    pose = pose_normal.astype(np.float64) / np.linalg.norm(pose_normal)
    normals = normals.astype(np.float64)
    orthogonal = normals - np.outer(normals @ pose, pose)
    return orthogonal / np.linalg.norm(orthogonal, axis=1, keepdims=True)


@dataclass(frozen=True)
class EditConfig:
    """How strongly to edit.

    strength: the API's 0..1, scales alpha linearly (0 leaves the code alone).
    margin: where a full-strength adaptive edit puts the mean score: at -margin.
    no_chin_threshold: a code whose mean score is below this is left alone (`skipped`).
    fixed_alpha: when set, alpha = strength * fixed_alpha (the seed used -5) instead of adaptive.
    keep_layers: layers copied back from the original; the rest are edited and scored.
    """

    strength: float = 1.0
    margin: float = 1.0
    no_chin_threshold: float = 0.0
    fixed_alpha: float | None = None
    keep_layers: tuple[int, ...] = KEPT_FINE_LAYERS

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in 0..1, got {self.strength}")


@dataclass(frozen=True)
class EditResult:
    """One edit: `wp` 1 x num_ws x w_dim float32, and the mean scores over the edited layers."""

    wp: np.ndarray
    alpha: float
    score_before: float
    score_after: float
    skipped: bool


def choose_alpha(score_before: float, score_per_alpha: float, config: EditConfig) -> float:
    """Alpha for a code scoring `score_before`, when each unit of alpha moves the score by `score_per_alpha`.

    Adaptive: the full edit lands the mean score at -margin; never positive, so an edit never
    pushes a face towards a double chin.
    """
    if config.fixed_alpha is not None:
        return config.strength * config.fixed_alpha
    full_alpha = (-config.margin - score_before) / score_per_alpha
    return config.strength * min(0.0, full_alpha)


def remove_double_chin(
    wp: np.ndarray,
    boundary: FineBoundary,
    config: EditConfig = EditConfig(),
    pose_normal: np.ndarray | None = None,
) -> EditResult:
    """Score `wp` (1 x num_ws x w_dim float32), choose alpha, and edit along the fine boundary.

    With `pose_normal` (w_dim, a yaw boundary) the direction is made orthogonal to pose per layer;
    alpha then accounts for the shorter projection of that direction on the chin normals.
    """
    layers = edited_layers(boundary.num_ws, config.keep_layers)
    _, score_before = double_chin_score(wp, boundary, layers)
    if score_before < config.no_chin_threshold:
        return EditResult(wp=wp.copy(), alpha=0.0, score_before=score_before, score_after=score_before, skipped=True)
    if pose_normal is None:
        direction = boundary.normals.astype(np.float64)
    else:
        direction = pose_conditioned_direction(boundary.normals, pose_normal)
    score_per_alpha = float(np.einsum("kd,kd->k", direction, boundary.normals.astype(np.float64))[list(layers)].mean())
    alpha = choose_alpha(score_before, score_per_alpha, config)
    edited = edit_wplus(wp, direction, alpha, config.keep_layers)
    _, score_after = double_chin_score(edited, boundary, layers)
    return EditResult(wp=edited, alpha=alpha, score_before=score_before, score_after=score_after, skipped=False)
