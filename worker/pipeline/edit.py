"""Edit stage: move a W+ code across a double-chin boundary, judged by its chin score.

The fine boundary is one linear SVM per style layer: a unit normal n[k] and an intercept b[k].
The signed distance d[k] = w[k] . n[k] + b[k] is positive on the double-chin side. The edit
moves only the coarse layers (pose, jaw, face shape); the fine layers are mixed back from the
original code (copied, at the default ratio 1), so the score is averaged over the edited layers
only: the kept layers cannot move and would only dilute it.

A W-space boundary (one 1 x w_dim normal, the seed's coarse boundaries) moves every layer the same
way: `coarse_edit` is the seed's coarse step (`remove_double_chin_step1.py`) that makes training pairs.

Pure numpy; every input is explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chinfix.settings import Settings

KEPT_FINE_LAYERS: tuple[int, ...] = tuple(range(7, 18))
"""Layers the seed's diffuse refinement copies back from the original (the warp path keeps 6..17)."""

SEED_ALPHA = -5.0
"""The published method's fixed edit strength along the fine boundary."""

COARSE_ALPHA = -4.0
COARSE_MIX_RATIO = 0.8
"""The seed's coarse step: alpha -4 along the W boundary, layers 7..17 mixed back at 0.8 towards the original."""

_UNIT_TOLERANCE = 1e-4


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class FineBoundary:
    """An edit boundary: `normals` num_ws x w_dim float32 unit vectors, `intercepts` num_ws float64.

    `intercepts` is None for boundaries published without them (the psi0.5/psi0.8 fine ones, the coarse
    W ones): such a boundary has no chin score, so only a fixed alpha can edit with it.
    """

    normals: np.ndarray
    intercepts: np.ndarray | None = None

    def __post_init__(self) -> None:
        normals = np.asarray(self.normals, dtype=np.float32)
        if normals.ndim != 2:
            raise ValueError(f"a boundary wants num_ws x w_dim normals, got shape {normals.shape}")
        if not np.isfinite(normals).all():
            raise ValueError("the boundary's normals contain NaN or infinite values")
        lengths = np.linalg.norm(normals.astype(np.float64), axis=1)
        if np.abs(lengths - 1.0).max() > _UNIT_TOLERANCE:
            raise ValueError(f"boundary normals must be unit vectors, lengths range {lengths.min():.4f}..{lengths.max():.4f}")
        object.__setattr__(self, "normals", _read_only(normals))
        if self.intercepts is not None:
            intercepts = np.asarray(self.intercepts, dtype=np.float64)
            if intercepts.shape != (normals.shape[0],) or not np.isfinite(intercepts).all():
                raise ValueError(
                    f"a boundary of {normals.shape[0]} normals wants {normals.shape[0]} finite intercepts, got shape {intercepts.shape}"
                )
            object.__setattr__(self, "intercepts", _read_only(intercepts))

    @property
    def num_ws(self) -> int:
        return self.normals.shape[0]


def load_fine_boundary(boundary_path: Path, intercept_path: Path | None = None, num_ws: int | None = None) -> FineBoundary:
    """Read a published boundary and, when given, its intercepts (num_ws x 1 float64).

    Normals: 1 x num_ws x w_dim or num_ws x w_dim (a W+ boundary, one normal per layer), or 1 x w_dim / w_dim
    (a W boundary): that one is repeated over `num_ws` layers, so the edit moves every layer alike.
    """
    normals = np.load(boundary_path, allow_pickle=False)
    if normals.ndim == 3 and normals.shape[0] == 1:
        normals = normals[0]
    if normals.ndim == 1 or normals.shape[0] == 1:
        if num_ws is None:
            raise ValueError(f"{boundary_path} is a W boundary ({normals.shape}); say over how many layers to repeat it")
        normals = np.tile(normals.reshape(1, -1), (num_ws, 1))
    intercepts = None if intercept_path is None else np.load(intercept_path, allow_pickle=False).reshape(-1)
    return FineBoundary(normals=normals, intercepts=intercepts)


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
    if boundary.intercepts is None:
        raise ValueError("this boundary has no intercepts, so codes have no chin score: edit with a fixed alpha")
    _check_code(wp, *boundary.normals.shape)
    per_layer = np.einsum("kd,kd->k", wp[0].astype(np.float64), boundary.normals.astype(np.float64))
    per_layer = per_layer + boundary.intercepts
    return per_layer, float(per_layer[list(layers)].mean())


def style_mix(
    edited: np.ndarray, original: np.ndarray, layers: tuple[int, ...] | range, ratio: float = 1.0
) -> np.ndarray:
    """`edited` with each of `layers` replaced by (1 - ratio) * edited + ratio * original, the seed's style
    mixing; ratio 1 copies those layers bit for bit. Both 1 x num_ws x w_dim; returns float32."""
    mixed = np.array(edited, dtype=np.float32, copy=True)
    kept = list(layers)
    if ratio == 1.0:
        mixed[:, kept] = original[:, kept]
    else:
        blend = (1.0 - ratio) * edited[:, kept].astype(np.float64) + ratio * original[:, kept].astype(np.float64)
        mixed[:, kept] = blend.astype(np.float32)
    return mixed


def edit_wplus(
    wp: np.ndarray,
    direction: np.ndarray,
    alpha: float,
    keep_layers: tuple[int, ...] | range = KEPT_FINE_LAYERS,
    mix_ratio: float = 1.0,
) -> np.ndarray:
    """`wp + alpha * direction`, then the `keep_layers` mixed back towards `wp` at `mix_ratio` (1: copied).

    wp: 1 x num_ws x w_dim float32; direction: num_ws x w_dim (one unit vector per layer).
    Returns a new 1 x num_ws x w_dim float32 code.
    """
    _check_code(wp, *direction.shape)
    moved = (wp.astype(np.float64) + alpha * direction.astype(np.float64)[None]).astype(np.float32)
    return style_mix(moved, wp, keep_layers, mix_ratio)


def coarse_edit(
    wp: np.ndarray,
    w_normal: np.ndarray,
    alpha: float = COARSE_ALPHA,
    keep_layers: tuple[int, ...] | range = KEPT_FINE_LAYERS,
    mix_ratio: float = COARSE_MIX_RATIO,
) -> np.ndarray:
    """The seed's coarse edit: every layer of `wp` (1 x num_ws x w_dim) moved by `alpha` along the W boundary
    `w_normal` (w_dim or 1 x w_dim), then `keep_layers` mixed back towards `wp` at `mix_ratio`."""
    normal = np.asarray(w_normal, dtype=np.float64).reshape(-1)
    direction = np.tile(normal / np.linalg.norm(normal), (wp.shape[1], 1))
    return edit_wplus(wp, direction, alpha, keep_layers, mix_ratio)


def pose_conditioned_direction(normals: np.ndarray, pose_normal: np.ndarray) -> np.ndarray:
    """Per layer, the chin normal with its component along the pose normal removed, renormalised.

    normals: num_ws x w_dim; pose_normal: w_dim (W-space, shared by every layer).
    Returns num_ws x w_dim float64 unit vectors orthogonal to `pose_normal`.
    """
    pose = pose_normal.astype(np.float64) / np.linalg.norm(pose_normal)
    normals = normals.astype(np.float64)
    orthogonal = normals - np.outer(normals @ pose, pose)
    return orthogonal / np.linalg.norm(orthogonal, axis=1, keepdims=True)


_DEFAULTS = Settings.model_fields


@dataclass(frozen=True)
class EditConfig:
    """How strongly to edit. The defaults are the settings' (`chinfix/settings.py`), the one place they live.

    strength: the API's 0..1, scales alpha linearly (0 leaves the code alone).
    margin: where a full-strength adaptive edit puts the mean score: at -margin. The default is calibrated on
      the seed's 7 real codes so that their mean adaptive alpha is the seed's -5.
    no_chin_threshold: a code whose mean score is below this is left alone (`skipped`).
    fixed_alpha: when set, alpha = strength * fixed_alpha (the seed used -5) instead of adaptive.
    keep_layers: layers mixed back from the original (at `mix_ratio`, 1 = copied); the rest are edited and scored.
    allow_positive: a positive fixed alpha moves a code towards a double chin; refused unless this is set.
    """

    strength: float = 1.0
    margin: float = _DEFAULTS["edit_margin"].default
    no_chin_threshold: float = _DEFAULTS["no_chin_threshold"].default
    fixed_alpha: float | None = _DEFAULTS["fixed_alpha"].default
    keep_layers: tuple[int, ...] = KEPT_FINE_LAYERS
    mix_ratio: float = 1.0
    allow_positive: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in 0..1, got {self.strength}")
        if not 0.0 <= self.mix_ratio <= 1.0:
            raise ValueError(f"mix ratio must be in 0..1, got {self.mix_ratio}")
        if self.fixed_alpha is not None and self.fixed_alpha > 0 and not self.allow_positive:
            raise ValueError(f"alpha {self.fixed_alpha:g} moves the code towards a double chin; allow positive alphas to do that")

    @classmethod
    def from_settings(cls, settings: Settings, strength: float, keep_layers: tuple[int, ...]) -> EditConfig:
        """What the worker and the command line edit with, unless told otherwise."""
        return cls(
            strength=strength,
            margin=settings.edit_margin,
            no_chin_threshold=settings.no_chin_threshold,
            fixed_alpha=settings.fixed_alpha,
            keep_layers=keep_layers,
        )


@dataclass(frozen=True)
class EditResult:
    """One edit: `wp` 1 x num_ws x w_dim float32, and the mean scores over the edited layers
    (None when the boundary has no intercepts)."""

    wp: np.ndarray
    alpha: float
    score_before: float | None
    score_after: float | None
    skipped: bool


def choose_alpha(score_before: float | None, score_per_alpha: float, config: EditConfig) -> float:
    """Alpha for a code scoring `score_before`, when each unit of alpha moves the score by `score_per_alpha`.

    Adaptive: the full edit lands the mean score at -margin; never positive, so an edit never
    pushes a face towards a double chin.
    """
    if config.fixed_alpha is not None:
        return config.strength * config.fixed_alpha
    if score_before is None:
        raise ValueError("the adaptive alpha needs the boundary's intercepts; give them, or a fixed alpha")
    full_alpha = (-config.margin - score_before) / score_per_alpha
    return config.strength * min(0.0, full_alpha)


def remove_double_chin(
    wp: np.ndarray,
    boundary: FineBoundary,
    config: EditConfig = EditConfig(),
    pose_normal: np.ndarray | None = None,
) -> EditResult:
    """Score `wp` (1 x num_ws x w_dim float32), choose alpha, and edit along the boundary.

    With `pose_normal` (w_dim, a yaw boundary) the direction is made orthogonal to pose per layer;
    alpha then accounts for the shorter projection of that direction on the chin normals.
    """
    _check_code(wp, *boundary.normals.shape)
    layers = edited_layers(boundary.num_ws, config.keep_layers)
    if not layers:
        raise ValueError("every style layer is kept from the original, so nothing would be edited")
    scored = boundary.intercepts is not None
    score_before = double_chin_score(wp, boundary, layers)[1] if scored else None
    if score_before is not None and score_before < config.no_chin_threshold:
        return EditResult(wp=wp.copy(), alpha=0.0, score_before=score_before, score_after=score_before, skipped=True)
    if pose_normal is None:
        direction = boundary.normals.astype(np.float64)
    else:
        direction = pose_conditioned_direction(boundary.normals, pose_normal)
    score_per_alpha = float(np.einsum("kd,kd->k", direction, boundary.normals.astype(np.float64))[list(layers)].mean())
    alpha = choose_alpha(score_before, score_per_alpha, config)
    edited = edit_wplus(wp, direction, alpha, config.keep_layers, config.mix_ratio)
    score_after = double_chin_score(edited, boundary, layers)[1] if scored else None
    return EditResult(wp=edited, alpha=alpha, score_before=score_before, score_after=score_after, skipped=False)
