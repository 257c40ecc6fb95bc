"""Stage 1: draw z, map to w and to the truncated W+ code, optionally synthesise the faces.

As the seed's generate_data_and_score.py: w is the mapping output before truncation (the coarse boundary is
trained on it), wp is w truncated toward the average w with `psi` on every style layer (what the generator draws
and what the pair stage edits). Chunk C's z comes from a generator seeded with (seed, C), so a chunk is the same
whether it is drawn first or after a restart.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from worker.training.directory import SampleManifest, TrainingDir, TrainingError, progress_bar, save_npy

SEED_PSI = 0.8
"""The seed's truncation for its training data set (generate_data_and_score.py, the psi-0.8 boundaries)."""
DEFAULT_CHUNK = 1000
JPEG_QUALITY = 95


def draw_z(seed: int, chunk: int, count: int, z_dim: int) -> np.ndarray:
    """count x z_dim float32 standard normal, reproducible from (seed, chunk)."""
    return np.random.default_rng([seed, chunk]).standard_normal((count, z_dim)).astype(np.float32)


@torch.no_grad()
def map_codes(G: torch.nn.Module, z: np.ndarray, psi: float) -> tuple[np.ndarray, np.ndarray]:
    """N x z_dim z → (w N x w_dim float32 before truncation, wp N x num_ws x w_dim float32 truncated by psi)."""
    ws = G.mapping(torch.from_numpy(z).to(G.w_avg.device))
    wp = G.w_avg.lerp(ws, psi)
    return ws[:, 0].cpu().numpy(), wp.cpu().numpy()


@torch.no_grad()
def synthesise_batch(G: torch.nn.Module, wp: np.ndarray) -> np.ndarray:
    """N x num_ws x w_dim codes → N x S x S x 3 uint8 RGB."""
    from worker.pipeline.invert import rgb_from_images

    images = G.synthesis(torch.from_numpy(np.ascontiguousarray(wp)).to(G.w_avg.device), noise_mode="const")
    return rgb_from_images(images)


def manifest_for(G: torch.nn.Module, num: int, chunk_size: int, psi: float, seed: int) -> SampleManifest:
    return SampleManifest(
        num=num, chunk_size=chunk_size, psi=psi, seed=seed,
        z_dim=G.z_dim, w_dim=G.w_dim, num_ws=G.num_ws, resolution=G.img_resolution,
    )  # fmt: skip


def check_generator(manifest: SampleManifest, G: torch.nn.Module, root: Path) -> None:
    """Later stages must use the generator the samples were drawn with (same latent shapes at least)."""
    have = (G.z_dim, G.w_dim, G.num_ws, G.img_resolution)
    want = (manifest.z_dim, manifest.w_dim, manifest.num_ws, manifest.resolution)
    if have != want:
        raise TrainingError(
            f"{root} was sampled with a generator of z_dim, w_dim, num_ws, resolution = {want}; this one has {have}"
        )


def run_sample(
    G: torch.nn.Module,
    directory: TrainingDir,
    num: int,
    psi: float = SEED_PSI,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    images: bool = False,
    batch_size: int = 4,
    show_progress: bool = True,
) -> SampleManifest:
    """Draw `num` samples into `directory`, skipping chunks already there; a re-run must use the same settings."""
    manifest = manifest_for(G, num, chunk_size, psi, seed)
    if directory.manifest_path.is_file() and directory.manifest() != manifest:
        raise TrainingError(
            f"{directory.root} was sampled with other settings ({directory.manifest()}); "
            "use the same ones to resume, or another directory"
        )
    directory.write_manifest(manifest)

    def chunk_done(chunk: int) -> bool:
        wanted = len(manifest.chunk_range(chunk))
        path = directory.chunk_path(chunk, "wp")
        return path.is_file() and len(np.load(path, mmap_mode="r")) == wanted and (
            not images or directory.image_path(manifest.chunk_range(chunk)[-1]).is_file()
        )

    done = [chunk for chunk in range(manifest.num_chunks) if chunk_done(chunk)]
    with progress_bar(num, "sample", sum(len(manifest.chunk_range(c)) for c in done), enabled=show_progress) as bar:
        for chunk in range(manifest.num_chunks):
            if chunk in done:
                continue
            indices = manifest.chunk_range(chunk)
            z = draw_z(seed, chunk, len(indices), G.z_dim)
            w, wp = map_codes(G, z, psi)
            if images:
                for start in range(0, len(indices), batch_size):
                    for offset, rgb in enumerate(synthesise_batch(G, wp[start : start + batch_size])):
                        path = directory.image_path(indices[start + offset])
                        path.parent.mkdir(parents=True, exist_ok=True)
                        cv2.imwrite(str(path), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                    bar.update(len(wp[start : start + batch_size]))
            # wp last: it marks the chunk done
            save_npy(directory.chunk_path(chunk, "z"), z)
            save_npy(directory.chunk_path(chunk, "w"), w)
            save_npy(directory.chunk_path(chunk, "wp"), wp)
            if not images:
                bar.update(len(indices))
    return manifest
