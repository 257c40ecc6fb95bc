"""Stage 3: the coarse boundary, one linear SVM in W between the highest- and lowest-scored samples.

As the seed's train_coarse_boundary.py (InterFaceGAN's train_boundary): sort by score, take the top and bottom
`ratio` of the samples (0.1), hold out 10% of each side (split 0.9), fit, report the validation accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.training.boundary import LinearBoundary, fit_linear_boundary, project_out
from worker.training.directory import TrainingError, save_npy

SEED_RATIO = 0.1
SEED_SPLIT = 0.9


def chosen_count(num_samples: int, ratio_or_count: float) -> int:
    """How many samples each side takes: a fraction of them when <= 1, else a count; at most half of them."""
    chosen = int(num_samples * ratio_or_count) if ratio_or_count <= 1 else int(ratio_or_count)
    return min(chosen, num_samples // 2)


def train_coarse_boundary(
    codes: np.ndarray,
    scores: np.ndarray,
    ratio: float = SEED_RATIO,
    split_ratio: float = SEED_SPLIT,
    seed: int = 0,
    condition: np.ndarray | None = None,
) -> LinearBoundary:
    """codes N x w_dim, scores N (higher = double chin). With `condition` (w_dim unit normal of another attribute)
    the normal is made orthogonal to it; the intercept then puts the hyperplane midway between the two sides'
    mean codes along the new normal (the SVM's own intercept belongs to its own normal)."""
    codes = np.asarray(codes, np.float32).reshape(len(codes), -1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(codes) != len(scores):
        raise TrainingError(f"{len(codes)} codes but {len(scores)} scores")
    if ratio <= 0:
        raise TrainingError(f"--ratio must be positive, got {ratio}")
    chosen = chosen_count(len(codes), ratio)
    train_count = int(chosen * split_ratio)
    if train_count == 0:
        raise TrainingError(f"{len(codes)} samples at ratio {ratio} leave no training samples; sample more")
    order = np.argsort(-scores, kind="stable")
    positives, negatives = codes[order[:chosen]], codes[order[len(codes) - chosen :]]
    rng = np.random.default_rng(seed)
    positive_order, negative_order = rng.permutation(chosen), rng.permutation(chosen)
    boundary = fit_linear_boundary(
        positives[positive_order[:train_count]],
        negatives[negative_order[:train_count]],
        positives[positive_order[train_count:]],
        negatives[negative_order[train_count:]],
    )
    if condition is None:
        return boundary
    normal = project_out(boundary.normal, condition)
    midpoint = (positives.mean(axis=0) + negatives.mean(axis=0)) / 2.0
    return LinearBoundary(normal, -float(midpoint @ normal), boundary.validation_accuracy, boundary.train_samples)


def intercept_path(boundary_path: Path) -> Path:
    """coarse.npy → coarse_intercept.npy (the published files' naming)."""
    return boundary_path.with_name(f"{boundary_path.stem}_intercept.npy")


def write_coarse_boundary(path: Path, boundary: LinearBoundary) -> None:
    """The normal as 1 x w_dim float32 at `path`, the intercept as 1 x 1 float64 beside it."""
    save_npy(path, boundary.normal.reshape(1, -1).astype(np.float32))
    save_npy(intercept_path(path), np.array([[boundary.intercept]], np.float64))


def load_w_normal(path: Path) -> np.ndarray:
    """A W-space boundary file (1 x w_dim or w_dim) → w_dim float32 unit vector."""
    normal = np.load(path, allow_pickle=False).astype(np.float64)
    if normal.ndim > 2 or (normal.ndim == 2 and normal.shape[0] != 1):
        raise TrainingError(f"{path} holds a {normal.shape} array; a W-space boundary is 1 x w_dim")
    normal = normal.reshape(-1)
    return (normal / np.linalg.norm(normal)).astype(np.float32)
