"""Stage 2: a double-chin probability per sample, from a classifier, a labels file or any scorer function.

A scorer is `function(batch: SampleBatch) -> N float probabilities`. `batch.images()` synthesises the faces on
first use (in batches, never all at once), so a scorer that reads only the codes costs no synthesis. The seed
scored with its ResNeXt classifier (`classifier_scorer`); `--scorer module:function` plugs in anything else, e.g.
a planted attribute in tests, or another facial-structure attribute.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worker.training.directory import TrainingDir, TrainingError, progress_bar, save_npy
from worker.training.sample import check_generator, synthesise_batch


@dataclass
class SampleBatch:
    """Some samples of a training directory: `indices` N int64, `w` N x w_dim, `wp` N x num_ws x w_dim float32."""

    indices: np.ndarray
    w: np.ndarray
    wp: np.ndarray
    generator: torch.nn.Module
    _images: np.ndarray | None = field(default=None, repr=False)

    def images(self) -> np.ndarray:
        """N x S x S x 3 uint8 RGB, synthesised once."""
        if self._images is None:
            self._images = synthesise_batch(self.generator, self.wp)
        return self._images


Scorer = Callable[[SampleBatch], np.ndarray]


def labels_scorer(csv_path: Path) -> Scorer:
    """Scores from a CSV of `sample,label` rows (label 0..1; sample an index or an image name such as 000042.jpg).
    A sample the file does not name is an error: a silent default would bias the boundary."""
    labels: dict[int, float] = {}
    with csv_path.open(newline="") as file:
        for row in csv.reader(file):
            if not row or row[0].strip().lower() in ("sample", "image", "index"):
                continue
            try:
                labels[int(Path(row[0].strip()).stem)] = float(row[1])
            except (ValueError, IndexError):
                raise TrainingError(f"{csv_path}: expected rows of 'sample,label', got {row!r}") from None

    def score(batch: SampleBatch) -> np.ndarray:
        missing = [int(index) for index in batch.indices if int(index) not in labels]
        if missing:
            raise TrainingError(f"{csv_path} has no label for sample(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
        return np.array([labels[int(index)] for index in batch.indices], np.float32)

    return score


def run_score(
    G: torch.nn.Module,
    directory: TrainingDir,
    scorer: Scorer,
    batch_size: int = 8,
    show_progress: bool = True,
) -> np.ndarray:
    """Score every sample (chunks already scored are kept), then write DIR/scores.npy. Returns N float32."""
    manifest = directory.manifest()
    check_generator(manifest, G, directory.root)
    done = [c for c in range(manifest.num_chunks) if directory.score_chunk_path(c).is_file()]
    finished = sum(len(manifest.chunk_range(c)) for c in done)
    with progress_bar(manifest.num, "score", finished, enabled=show_progress) as bar:
        for chunk in range(manifest.num_chunks):
            if chunk in done:
                continue
            indices = np.arange(manifest.chunk_range(chunk).start, manifest.chunk_range(chunk).stop)
            w, wp = directory.load_chunk(chunk, "w"), directory.load_chunk(chunk, "wp")
            scores = []
            for start in range(0, len(indices), batch_size):
                part = slice(start, start + batch_size)
                batch = SampleBatch(indices[part], w[part], wp[part], G)
                values = np.asarray(scorer(batch), np.float32).reshape(-1)
                if values.shape != (len(batch.indices),):
                    raise TrainingError(f"the scorer returned {values.shape[0]} scores for {len(batch.indices)} samples")
                scores.append(values)
                bar.update(len(values))
            save_npy(directory.score_chunk_path(chunk), np.concatenate(scores))
    all_scores = np.concatenate([np.load(directory.score_chunk_path(c)) for c in range(manifest.num_chunks)])
    save_npy(directory.scores_path, all_scores[:, None])
    return all_scores
