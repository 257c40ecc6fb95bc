"""A planted attribute for the training tests: a hidden unit direction h in W decides the "double chin".

h is a fixed random mix of W's three main axes of variation. A tiny random mapping network's W is far from round
(axis lengths from about 4.7 down to 0.06), and between the top and bottom 10% along a direction the generator
hardly varies, the widest-margin hyperplane leans onto the long axes (cosine about 0.5 to that direction): a
linear SVM recovers attributes the generator varies along, as a face's double chin is.

`planted_scorer` is a real scorer (`chinfix train score --scorer tests.planted_attribute:planted_scorer`):
score = sigmoid(SHARPNESS * (w - w_avg) . h + noise), so the coarse stage has something to recover and
can be checked against h. `lower_band` is a real region function for the pair stage: the lower quarter of the
image, where a tiny random generator has no neck to find.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from worker.training.sample import draw_z, map_codes
from worker.training.score import SampleBatch

HIDDEN_SEED = 20210801
MAIN_AXES = 3
AXIS_SAMPLES = 4000
SHARPNESS = 1.0
NOISE = 0.1
"""Standard deviation of the noise added to the logit (inside the sigmoid, so no two scores tie at 1)."""


@lru_cache(maxsize=4)
def hidden_direction(G: torch.nn.Module) -> np.ndarray:
    """w_dim float64 unit vector in the span of the MAIN_AXES longest axes of G's W distribution."""
    w, _ = map_codes(G, draw_z(HIDDEN_SEED, 0, AXIS_SAMPLES, G.z_dim), 1.0)
    _, axes = np.linalg.eigh(np.cov((w - w.mean(axis=0)).T))
    mix = np.random.default_rng(HIDDEN_SEED).standard_normal(MAIN_AXES)
    direction = axes[:, ::-1][:, :MAIN_AXES] @ mix
    return direction / np.linalg.norm(direction)


def planted_scorer(batch: SampleBatch) -> np.ndarray:
    w_avg = batch.generator.w_avg.cpu().numpy()
    projection = (batch.w - w_avg) @ hidden_direction(batch.generator)
    noise = np.random.default_rng(batch.indices.tolist()).normal(0.0, NOISE, len(batch.indices))
    return 1.0 / (1.0 + np.exp(-(SHARPNESS * projection + noise)))


def lower_band(image_rgb: np.ndarray, registry: object) -> np.ndarray:
    """SxS bool: the lower quarter of the image."""
    region = np.zeros(image_rgb.shape[:2], bool)
    region[3 * image_rgb.shape[0] // 4 :] = True
    return region
