"""Module-scoped fixtures for projector tests: a tiny (32 px) random generator, a random LPIPS, their W statistics.

Import the fixtures into a test module (`from tests.projector_fixtures import generator, metric, w_stats`)."""

from __future__ import annotations

import pytest

from tests.generator_fixtures import build_tiny_generator
from worker.models.lpips import build_random_lpips
from worker.pipeline.invert import w_statistics

W_STATISTICS_SAMPLES = 500
"""Enough mapped z for a tiny generator's w_avg and w_std; the projector's 10,000 cost seconds per module."""


@pytest.fixture(scope="module")
def generator():
    return build_tiny_generator(resolution=32, seed=0)


@pytest.fixture(scope="module")
def metric():
    return build_random_lpips(seed=0)


@pytest.fixture(scope="module")
def w_stats(generator):
    return w_statistics(generator, samples=W_STATISTICS_SAMPLES)
