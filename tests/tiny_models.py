"""A complete model store of tiny, random-weight models in the official file formats.

Every file the worker loads is here, at the manifest's file name, so the real loaders and the real pipeline
run end to end; only the weights are random (and small where the architecture allows).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import torch

from model_store.store import ModelStore
from tests.generator_fixtures import build_tiny_generator, write_nvidia_pickle
from tests.lpips_fixtures import save_random_lpips_checkpoints
from tests.parsing_fixtures import save_random_bisenet
from tests.perceptual_fixtures import save_random_seed_vgg16
from worker.training.classifier import DoubleChinClassifier

TINY_RESOLUTION = 64
CHIN_INTERCEPT = 3.0
"""Intercept of every layer of the tiny boundary: a tiny code's dot product with a unit normal is well under
this, so every face scores as a double chin and gets edited."""
TINY_CLASSIFIER_BLOCKS = (1, 1, 1, 1)
"""One bottleneck per stage: the seed's layout and widths (which its key names fix), a fifth of its blocks."""
TINY_CLASSIFIER_FC_GAIN = 300.0
"""PyTorch's default initialisation leaves every logit within 0.01 of zero, so every face would score 0.50;
scaled up, the probability answers to its input (halving a face's brightness moves it by about 0.02)."""


@functools.cache
def tiny_classifier_checkpoint(seed: int = 0) -> bytes:
    """The bytes of a `classification_model.pth` in the seed's layout ({'iteration', 'model': torchvision-named
    state dict}) with random weights; built once per test session (about 30 MB) and written into every store."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DoubleChinClassifier(blocks=TINY_CLASSIFIER_BLOCKS)
    with torch.no_grad():
        model.network.fc.weight.mul_(TINY_CLASSIFIER_FC_GAIN)
    buffer = io.BytesIO()
    torch.save({"iteration": 0, "model": model.network.state_dict()}, buffer)
    return buffer.getvalue()


def build_tiny_model_store(
    model_dir: Path, seed: int = 0, with_parser: bool = True, with_classifier: bool = False
) -> ModelStore:
    """Every model an edit needs; the face parser unless `with_parser` is off; the optional double-chin classifier
    only `with_classifier` (it adds two parses and a ResNeXt pass to every edit's quality facts)."""
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
    if with_classifier:
        store.path("double_chin_classifier").write_bytes(tiny_classifier_checkpoint(seed))
    return store
