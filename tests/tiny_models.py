"""A complete model store of tiny, random-weight models in the official file formats.

Every file the worker loads is here, at the manifest's file name, so the real loaders and the real pipeline
run end to end; only the weights are random (and small where the architecture allows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_store.store import ModelStore
from tests.generator_fixtures import build_tiny_generator, write_nvidia_pickle
from tests.lpips_fixtures import save_random_lpips_checkpoints
from tests.parsing_fixtures import save_random_bisenet
from tests.perceptual_fixtures import save_random_seed_vgg16

TINY_RESOLUTION = 64
CHIN_INTERCEPT = 3.0
"""Intercept of every layer of the tiny boundary: a tiny code's dot product with a unit normal is well under
this, so every face scores as a double chin and gets edited."""


def build_tiny_model_store(model_dir: Path, seed: int = 0, with_parser: bool = True) -> ModelStore:
    store = ModelStore(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    generator = build_tiny_generator(TINY_RESOLUTION, seed)
    write_nvidia_pickle(generator, store.path("stylegan2_ffhq"))
    rng = np.random.default_rng(seed)
    normals = rng.standard_normal((1, generator.num_ws, generator.w_dim))
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    np.save(store.path("fine_boundary"), normals.astype(np.float32))
    np.save(store.path("fine_intercept"), np.full((generator.num_ws, 1), CHIN_INTERCEPT))
    save_random_lpips_checkpoints(store.path("vgg16_imagenet"), store.path("lpips_vgg_lin"), seed)
    save_random_seed_vgg16(store.path("vgg16_perceptual"), seed)
    if with_parser:
        save_random_bisenet(store.path("face_parsing_bisenet"), seed)
    return store
