"""Where each training stage reads and writes: plain .npy and .json files under one directory.

DIR/sample.json                      how the samples were drawn (SampleManifest)
DIR/samples/CCCCC_{z,w,wp}.npy       chunk C: z (n x z_dim), w (n x w_dim), wp (n x num_ws x w_dim), float32
DIR/images/IIIIII.jpg                sample I synthesised (optional)
DIR/scores/CCCCC.npy                 chunk C's double-chin probabilities, n float32
DIR/scores.npy                       all of them, N x 1 float32 (the seed's double_chin_scores.npy layout)
DIR/pairs/plan.json                  the pair shards: sample indices, settings, queue run id
DIR/pairs/SSSSS_{with,without}.npy   shard S's pairs, n x num_ws x w_dim float32
DIR/pairs/SSSSS_{index,skipped}.npy  the sample indices those pairs came from, and those without a region

Every file is written under a temporary name and renamed, so a killed stage leaves only whole files behind and
a re-run picks up where it stopped.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PAIR_KINDS = ("with", "without", "index", "skipped")


class TrainingError(Exception):
    """A training stage cannot run as asked; the message says why and what to do (the CLI prints it, exit 2)."""


@dataclass(frozen=True)
class SampleManifest:
    """How DIR's samples were drawn; later stages check their generator against it."""

    num: int
    chunk_size: int
    psi: float
    seed: int
    z_dim: int
    w_dim: int
    num_ws: int
    resolution: int

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num / self.chunk_size)

    def chunk_range(self, chunk: int) -> range:
        """The sample indices of one chunk."""
        return range(chunk * self.chunk_size, min(self.num, (chunk + 1) * self.chunk_size))


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as file:
        np.save(file, array, allow_pickle=False)
    os.replace(partial, path)


def save_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


def load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


@dataclass(frozen=True)
class TrainingDir:
    root: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / "sample.json"

    def chunk_path(self, chunk: int, kind: str) -> Path:
        return self.root / "samples" / f"{chunk:05d}_{kind}.npy"

    def image_path(self, index: int) -> Path:
        return self.root / "images" / f"{index:06d}.jpg"

    def score_chunk_path(self, chunk: int) -> Path:
        return self.root / "scores" / f"{chunk:05d}.npy"

    @property
    def scores_path(self) -> Path:
        return self.root / "scores.npy"

    @property
    def plan_path(self) -> Path:
        return self.root / "pairs" / "plan.json"

    def pair_path(self, shard: int, kind: str) -> Path:
        return self.root / "pairs" / f"{shard:05d}_{kind}.npy"

    def manifest(self) -> SampleManifest:
        if not self.manifest_path.is_file():
            raise TrainingError(f"{self.root} holds no samples yet: run `chinfix train sample {self.root}` first")
        return SampleManifest(**json.loads(self.manifest_path.read_text()))

    def write_manifest(self, manifest: SampleManifest) -> None:
        save_json(self.manifest_path, asdict(manifest))

    def load_chunk(self, chunk: int, kind: str) -> np.ndarray:
        return load_npy(self.chunk_path(chunk, kind))

    def load_codes(self, kind: str) -> np.ndarray:
        """Every chunk's `kind` codes, concatenated in sample order."""
        manifest = self.manifest()
        return np.concatenate([self.load_chunk(chunk, kind) for chunk in range(manifest.num_chunks)])

    def load_wp(self, indices: np.ndarray) -> np.ndarray:
        """len(indices) x num_ws x w_dim float32: the W+ codes of the given samples, read chunk by chunk."""
        manifest = self.manifest()
        chunks = indices // manifest.chunk_size
        out = np.empty((len(indices), manifest.num_ws, manifest.w_dim), np.float32)
        for chunk in np.unique(chunks):
            wp = load_npy(self.chunk_path(int(chunk), "wp"))
            selected = chunks == chunk
            out[selected] = wp[indices[selected] - chunk * manifest.chunk_size]
        return out

    def load_scores(self) -> np.ndarray:
        """N float32 probabilities."""
        if not self.scores_path.is_file():
            raise TrainingError(f"{self.root} has no scores yet: run `chinfix train score {self.root}` first")
        return load_npy(self.scores_path).reshape(-1)

    def pair_shard_done(self, shard: int) -> bool:
        return all(self.pair_path(shard, kind).is_file() for kind in PAIR_KINDS)


def progress_bar(total: int, description: str, done: int = 0, unit: str = "sample", enabled: bool = True) -> Any:
    """A tqdm bar with rate and ETA that starts at `done` (work a previous run finished)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=description, unit=unit, disable=not enabled, dynamic_ncols=True)
