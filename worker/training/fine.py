"""Stage 5: the fine boundary, one linear SVM per style layer between the codes with and without a double chin.

As the seed's train_fine_boundary.py: layer k separates wp_with[k] (label 1) from wp_without[k] (label 0), 90% of
the pairs for training. The held-out 10% are whole pairs (the seed shuffled the two sides separately, so one face
could train on one side and validate on the other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.training.boundary import LinearBoundary, fit_linear_boundary, split_indices
from worker.training.directory import PAIR_KINDS, TrainingDir, TrainingError, load_npy, progress_bar, save_npy
from worker.training.coarse import SEED_SPLIT


def train_fine_boundary(
    with_codes: np.ndarray,
    without_codes: np.ndarray,
    split_ratio: float = SEED_SPLIT,
    seed: int = 0,
    show_progress: bool = True,
) -> list[LinearBoundary]:
    """with_codes, without_codes: P x num_ws x w_dim, pair i the same face. Returns one boundary per layer."""
    if with_codes.shape != without_codes.shape or with_codes.ndim != 3:
        raise TrainingError(
            f"pairs must be two P x num_ws x w_dim arrays of one shape, got {with_codes.shape} and {without_codes.shape}"
        )
    train, held_out = split_indices(len(with_codes), split_ratio, np.random.default_rng(seed))
    if len(train) == 0:
        raise TrainingError(f"{len(with_codes)} pairs at split {split_ratio} leave none for training")
    boundaries = []
    with progress_bar(with_codes.shape[1], "fine", unit="layer", enabled=show_progress) as bar:
        for layer in range(with_codes.shape[1]):
            boundaries.append(fit_linear_boundary(
                with_codes[train, layer], without_codes[train, layer],
                with_codes[held_out, layer], without_codes[held_out, layer],
            ))  # fmt: skip
            bar.update(1)
    return boundaries


def collect_pairs(directory: TrainingDir) -> tuple[np.ndarray, np.ndarray]:
    """Every finished pair shard of DIR, concatenated: (with, without), each P x num_ws x w_dim float32."""
    shards = sorted({int(path.name[:5]) for path in (directory.root / "pairs").glob("*_without.npy")})
    shards = [shard for shard in shards if directory.pair_shard_done(shard)]
    if not shards:
        raise TrainingError(f"{directory.root} has no pairs yet: run `chinfix train pairs {directory.root}` first")
    with_codes = np.concatenate([load_npy(directory.pair_path(shard, PAIR_KINDS[0])) for shard in shards])
    without_codes = np.concatenate([load_npy(directory.pair_path(shard, PAIR_KINDS[1])) for shard in shards])
    return with_codes, without_codes


def write_fine_boundary(out_dir: Path, boundaries: list[LinearBoundary]) -> None:
    """OUT_DIR/boundary.npy (1 x num_ws x w_dim float32) and OUT_DIR/intercept.npy (num_ws x 1 float64): the
    published files' layout, which `worker.pipeline.edit.load_fine_boundary` reads."""
    save_npy(out_dir / "boundary.npy", np.stack([b.normal for b in boundaries])[None].astype(np.float32))
    save_npy(out_dir / "intercept.npy", np.array([[b.intercept] for b in boundaries], np.float64))
