"""W+ inversion on a tiny (32px) random StyleGAN2 with a randomly initialised LPIPS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.generator_fixtures import build_tiny_generator
from worker.models.lpips import build_random_lpips
from worker.pipeline.invert import (
    INVERSION_PRESETS,
    InversionConfig,
    invert_wplus,
    perceptual_input,
    projector_learning_rate,
    rgb_from_images,
    targets_from_rgb,
)


@pytest.fixture(scope="module")
def generator():
    return build_tiny_generator(resolution=32, seed=0)


@pytest.fixture(scope="module")
def metric():
    return build_random_lpips(seed=0)


def _random_codes(G, count: int, seed: int) -> torch.Tensor:
    """Mapped random z, perturbed per layer: genuine W+ codes away from w_avg."""
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ws = G.mapping(torch.randn((count, G.z_dim), generator=noise))
        return ws + 0.2 * torch.randn(ws.shape, generator=noise)


def _synthesise(G, wp) -> torch.Tensor:
    with torch.no_grad():
        return G.synthesis(torch.as_tensor(wp), noise_mode="const")


def _mse(images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    return (images - targets).square().mean(dim=(1, 2, 3)).numpy()


def test_inversion_reconstructs_a_synthesised_target(generator, metric):
    targets = _synthesise(generator, _random_codes(generator, 1, seed=1))
    start = _synthesise(generator, generator.w_avg.expand(1, generator.num_ws, generator.w_dim))
    result = invert_wplus(generator, targets, metric, InversionConfig(steps=30, plateau_patience=None))

    assert result.wp.shape == (1, generator.num_ws, generator.w_dim) and result.wp.dtype == np.float32
    assert result.steps_run.tolist() == [30] and result.stopped_early.tolist() == [False]
    window_means = result.losses[0].reshape(6, 5).mean(axis=1)
    assert np.all(np.diff(window_means) < 0), window_means
    start_mse, final_mse = _mse(start, targets), _mse(_synthesise(generator, result.wp), targets)
    assert final_mse[0] < 0.1 * start_mse[0]


def test_batch_of_three_equals_three_single_runs(generator, metric):
    targets = _synthesise(generator, _random_codes(generator, 3, seed=2))
    config = InversionConfig(steps=12, plateau_patience=None)
    batch = invert_wplus(generator, targets, metric, config)
    singles = [invert_wplus(generator, targets[i : i + 1], metric, config) for i in range(3)]
    # Batched and single grouped convolutions round differently; Adam carries that along.
    np.testing.assert_allclose(batch.wp, np.concatenate([s.wp for s in singles]), atol=5e-3)
    np.testing.assert_allclose(batch.losses, np.concatenate([s.losses for s in singles]), rtol=2e-3)
    assert not np.allclose(batch.wp[0], batch.wp[1], atol=0.1)


def test_progress_callback_sees_every_step(generator, metric):
    targets = _synthesise(generator, _random_codes(generator, 2, seed=3))
    calls = []
    result = invert_wplus(
        generator,
        targets,
        metric,
        InversionConfig(steps=7, plateau_patience=None),
        progress=lambda step, total, losses: calls.append((step, total, losses)),
    )
    assert [(step, total) for step, total, _ in calls] == [(step, 7) for step in range(1, 8)]
    for step, _, losses in calls:
        np.testing.assert_array_equal(losses, result.losses[:, step - 1])


def test_plateaued_crop_stops_early_while_its_batch_mate_goes_on(generator, metric):
    average = generator.w_avg.expand(1, generator.num_ws, generator.w_dim)
    # Synthesised as one batch, as the inversion's first step will: bit-identical, so the loss is exactly 0.
    targets = _synthesise(generator, torch.cat([average, _random_codes(generator, 1, seed=4)]))
    far_away = targets[1:]
    config = InversionConfig(steps=15, plateau_patience=5, plateau_tolerance=1e-3)
    result = invert_wplus(generator, targets, metric, config)

    # The target IS G(w_avg): the loss starts at 0 and cannot improve, so patience runs out.
    assert result.stopped_early.tolist() == [True, False]
    assert result.steps_run.tolist() == [6, 15]
    assert np.isnan(result.losses[0, 6:]).all() and not np.isnan(result.losses[1]).any()
    np.testing.assert_array_equal(result.wp[0], average[0].numpy())
    alone = invert_wplus(generator, far_away, metric, config)
    np.testing.assert_allclose(result.wp[1], alone.wp[0], atol=5e-3)


def test_init_wp_is_the_starting_point(generator, metric):
    codes = _random_codes(generator, 2, seed=5)
    targets = _synthesise(generator, codes)
    result = invert_wplus(generator, targets, metric, InversionConfig(steps=3, plateau_patience=None), init_wp=codes.numpy())
    assert result.losses[:, 0].max() < 1e-6
    # lr is 0 on step 0 (warm-up) and the gradient vanishes at the optimum: the code stays put.
    np.testing.assert_allclose(result.wp, codes.numpy(), atol=1e-4)


def test_code_noise_is_per_crop_reproducible(generator, metric):
    targets = _synthesise(generator, _random_codes(generator, 2, seed=6))
    config = InversionConfig(steps=6, plateau_patience=None, w_noise_factor=0.05, w_std_samples=500)
    batch = invert_wplus(generator, targets, metric, config)
    second = invert_wplus(generator, targets[1:], metric, config)
    np.testing.assert_allclose(batch.wp[1], second.wp[0], atol=1e-4)
    quiet = invert_wplus(generator, targets[1:], metric, InversionConfig(steps=6, plateau_patience=None))
    assert not np.allclose(quiet.wp[0], second.wp[0], atol=1e-4)


def test_learning_rate_ramps_like_the_projector():
    config = InversionConfig(steps=1000, learning_rate=0.1, lr_rampup=0.05, lr_rampdown=0.25)
    rates = np.array([projector_learning_rate(step, config) for step in range(1000)])
    assert rates[0] == 0.0
    assert rates[25] == pytest.approx(0.05)
    np.testing.assert_allclose(rates[50:750], 0.1)
    assert rates[875] == pytest.approx(0.05)
    assert np.all(np.diff(rates[750:]) < 0) and rates[-1] < 1e-4


def test_presets_are_ordered_schedules():
    fast, quality, paper = (INVERSION_PRESETS[name] for name in ("fast", "quality", "paper"))
    assert fast.steps < quality.steps < paper.steps == 1000
    assert paper.plateau_patience is None and paper.w_noise_factor == 0.05


def test_large_images_are_area_downsampled_to_256():
    images = torch.rand((1, 3, 512, 512)) * 2 - 1
    torch.testing.assert_close(perceptual_input(images), F.avg_pool2d(images, 2))
    small = torch.rand((1, 3, 64, 64))
    assert perceptual_input(small) is small


def test_rgb_crops_round_trip_through_targets():
    crops = [np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8) for seed in (0, 1)]
    targets = targets_from_rgb(crops)
    assert targets.shape == (2, 3, 32, 32) and float(targets.min()) >= -1 and float(targets.max()) <= 1
    np.testing.assert_array_equal(rgb_from_images(targets), np.stack(crops))


def test_targets_of_the_wrong_size_are_rejected(generator, metric):
    with pytest.raises(ValueError, match="targets"):
        invert_wplus(generator, torch.zeros((1, 3, 64, 64)), metric, InversionConfig(steps=1))
    with pytest.raises(ValueError, match="init_wp"):
        invert_wplus(generator, torch.zeros((1, 3, 32, 32)), metric, InversionConfig(steps=1), init_wp=np.zeros((1, 3, 32)))
