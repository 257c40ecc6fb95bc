"""The projector on a tiny (32px) random StyleGAN2 with a randomly initialised LPIPS."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.generator_fixtures import single_threaded_torch  # noqa: F401 (fixture)
from tests.projector_fixtures import generator, metric  # noqa: F401 (fixtures)
from worker.pipeline.invert import (
    INVERSION_PRESETS,
    InversionConfig,
    WStatistics,
    code_noise_scale,
    noise_regularization,
    noise_tensors,
    perceptual_input,
    project,
    projector_learning_rate,
    renormalize_noise_,
    rgb_from_images,
    targets_from_rgb,
    w_statistics,
)

pytestmark = pytest.mark.usefixtures("single_threaded_torch")


@pytest.fixture(scope="module")
def w_stats(generator):
    return w_statistics(generator)


def _random_codes(G, count: int, seed: int) -> torch.Tensor:
    """Mapped random z: W codes (identical rows) away from w_avg."""
    with torch.no_grad():
        return G.mapping(torch.randn((count, G.z_dim), generator=torch.Generator().manual_seed(seed)))


def _synthesise(G, wp, noise=None) -> torch.Tensor:
    with torch.no_grad():
        return G.synthesis(torch.as_tensor(wp), noise=noise)


def _lpips(metric, images, targets) -> np.ndarray:
    with torch.no_grad():
        return metric(perceptual_input(images), perceptual_input(targets)).numpy()


def test_learning_rate_ramps_like_the_projector():
    config = InversionConfig(steps=1000)
    rates = np.array([projector_learning_rate(step, config) for step in range(1000)])
    assert rates[0] == 0.0
    assert rates[25] == pytest.approx(0.05)
    np.testing.assert_allclose(rates[50:750], 0.1)
    assert rates[875] == pytest.approx(0.05)
    assert np.all(np.diff(rates[750:]) < 0) and 0 < rates[-1] < 1e-4


def test_ramps_are_fractions_of_the_step_count():
    fast = InversionConfig(steps=250)
    assert projector_learning_rate(5, fast) == pytest.approx(0.1 * 5 / 12.5)
    assert projector_learning_rate(13, fast) == projector_learning_rate(187, fast) == pytest.approx(0.1)
    # Step 200 is 0.8 of the way: the cosine ramp-down (last 0.25) is 0.8 of its way down from the top.
    assert projector_learning_rate(200, fast) == pytest.approx(0.1 * (0.5 - 0.5 * np.cos(0.8 * np.pi)))
    for steps in (200, 1000):
        config = InversionConfig(steps=steps)
        assert code_noise_scale(0, 2.0, config) == pytest.approx(0.1)
        assert code_noise_scale(int(steps * 0.375), 2.0, config) == pytest.approx(0.1 * 0.25)
        assert code_noise_scale(int(steps * 0.75), 2.0, config) == 0.0
        assert code_noise_scale(steps - 1, 2.0, config) == 0.0


def test_presets_are_the_projector_with_250_500_and_1000_steps():
    assert INVERSION_PRESETS["paper"] == InversionConfig(steps=1000)
    assert {name: preset.steps for name, preset in INVERSION_PRESETS.items()} == {"fast": 250, "quality": 500, "paper": 1000}
    paper = INVERSION_PRESETS["paper"]
    assert (paper.space, paper.learning_rate, paper.lr_rampup, paper.lr_rampdown) == ("w", 0.1, 0.05, 0.25)
    assert (paper.w_noise_factor, paper.w_noise_ramp, paper.noise_regularization) == (0.05, 0.75, 1e5)
    for preset in INVERSION_PRESETS.values():
        assert dataclasses.replace(preset, steps=1000) == paper


def test_noise_regularization_of_known_maps():
    ones = torch.ones((1, 1, 16, 16))
    checkerboard = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0
    checkerboard = checkerboard.reshape(1, 1, 16, 16)
    # Constant map: each shift's mean product is 1, in x and y, at 16 and 8 px: 4 terms of 1.
    assert noise_regularization([ones]).tolist() == [4.0]
    # Checkerboard: products -1 at 16 px (squared: 1, twice); it averages to 0 at 8 px.
    assert noise_regularization([checkerboard]).tolist() == [2.0]
    # Maps smaller than 8 px count once; maps of one layer are per sample, layers add up.
    small = torch.ones((2, 1, 4, 4))
    per_sample = noise_regularization([torch.cat([ones, checkerboard]), small])
    assert per_sample.tolist() == [6.0, 4.0]


def test_noise_regularization_sums_every_level_of_the_pyramid():
    maps = torch.randn((1, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    expected, level = 0.0, maps[0, 0].double()
    for _ in range(3):  # 32, 16, 8
        expected += float((level * torch.roll(level, 1, 1)).mean()) ** 2 + float((level * torch.roll(level, 1, 0)).mean()) ** 2
        level = level.reshape(level.shape[0] // 2, 2, level.shape[1] // 2, 2).mean(dim=(1, 3))
    assert float(noise_regularization([maps])) == pytest.approx(expected, rel=1e-5)


def test_renormalisation_gives_each_sample_zero_mean_and_unit_variance():
    maps = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    maps[0] = maps[0] * 3 + 5
    maps[1] = maps[1] * 0.1 - 2
    before = maps.clone()
    renormalize_noise_([maps])
    np.testing.assert_allclose(maps.mean(dim=(1, 2, 3)).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(maps.square().mean(dim=(1, 2, 3)).numpy(), 1.0, atol=1e-5)
    # An affine map of each sample: the pattern stays.
    correlation = np.corrcoef(before[1].flatten().numpy(), maps[1].flatten().numpy())[0, 1]
    assert correlation == pytest.approx(1.0)


def test_w_statistics_are_the_projectors_estimate(generator):
    stats = w_statistics(generator, samples=500, seed=123)
    z = np.random.RandomState(123).randn(500, generator.z_dim)
    with torch.no_grad():
        w = generator.mapping(torch.from_numpy(z))[:, 0].double().numpy()
    np.testing.assert_allclose(stats.w_avg.numpy(), w.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert stats.w_std == pytest.approx(np.sqrt(((w - w.mean(axis=0)) ** 2).sum() / 500))
    assert stats.w_avg.dtype == torch.float32 and stats.w_std > 0


def test_the_code_starts_at_the_given_w_avg(generator, metric):
    start = torch.linspace(-1, 1, generator.w_dim)
    targets = _synthesise(generator, _random_codes(generator, 1, seed=1))
    # lr is 0 at step 0 (warm-up): one step leaves the code where it started.
    result = project(generator, targets, metric, InversionConfig(steps=1), w_stats=WStatistics(start, 0.5))
    np.testing.assert_array_equal(result.wp[0], start.expand(generator.num_ws, -1).numpy())


def test_w_space_inversion_reconstructs_with_identical_rows(generator, metric, w_stats):
    targets = _synthesise(generator, _random_codes(generator, 1, seed=2))
    result = project(generator, targets, metric, InversionConfig(steps=40), w_stats=w_stats)

    assert result.wp.shape == (1, generator.num_ws, generator.w_dim) and result.wp.dtype == np.float32
    np.testing.assert_array_equal(result.wp[0], np.broadcast_to(result.wp[0, :1], result.wp[0].shape))
    assert result.losses.shape == (1, 40) and result.final_losses[0] == result.losses[0, -1]
    assert result.losses[0, -5:].mean() < 0.5 * result.losses[0, :5].mean()
    start = _synthesise(generator, w_stats.w_avg.expand(1, generator.num_ws, -1))
    found = _synthesise(generator, result.wp, noise_tensors(result.noise, "cpu"))
    assert _lpips(metric, found, targets)[0] < 0.5 * _lpips(metric, start, targets)[0]


def test_noise_maps_are_optimised_renormalised_and_reconstruct_better(generator, metric, w_stats):
    targets = _synthesise(generator, _random_codes(generator, 1, seed=3))
    result = project(generator, targets, metric, InversionConfig(steps=40), w_stats=w_stats)
    resolutions = generator.synthesis.noise_resolutions()
    assert list(result.noise) == list(resolutions)
    for name, side in resolutions.items():
        maps = result.noise[name]
        assert maps.shape == (1, 1, side, side) and maps.dtype == np.float32
        assert abs(maps.mean()) < 1e-5 and np.square(maps).mean() == pytest.approx(1.0, abs=1e-4)
    # The maps moved away from the seeded N(0, 1) draw they started from.
    first = torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(303))
    assert not np.allclose(result.noise["b4.conv1"], first.numpy(), atol=1e-2)

    fresh = {name: torch.randn(maps.shape) for name, maps in result.noise.items()}
    with_found_noise = _lpips(metric, _synthesise(generator, result.wp, noise_tensors(result.noise, "cpu")), targets)
    with_fresh_noise = _lpips(metric, _synthesise(generator, result.wp, fresh), targets)
    assert with_found_noise[0] < with_fresh_noise[0]


def test_wplus_space_optimises_each_layer(generator, metric, w_stats):
    targets = _synthesise(generator, _random_codes(generator, 1, seed=4))
    result = project(generator, targets, metric, InversionConfig(steps=10, space="wplus"), w_stats=w_stats)
    assert result.wp.shape == (1, generator.num_ws, generator.w_dim)
    assert not np.allclose(result.wp[0, 0], result.wp[0, -1], atol=1e-3)


def test_batch_of_three_equals_three_single_runs(generator, metric, w_stats):
    targets = _synthesise(generator, _random_codes(generator, 3, seed=5))
    config = InversionConfig(steps=12)
    batch = project(generator, targets, metric, config, w_stats=w_stats)
    singles = [project(generator, targets[i : i + 1], metric, config, w_stats=w_stats) for i in range(3)]
    # Batched and single grouped convolutions round differently; Adam carries that along.
    np.testing.assert_allclose(batch.wp, np.concatenate([s.wp for s in singles]), atol=5e-3)
    np.testing.assert_allclose(batch.losses, np.concatenate([s.losses for s in singles]), rtol=2e-3)
    for name, maps in batch.noise.items():
        np.testing.assert_allclose(maps, np.concatenate([s.noise[name] for s in singles]), atol=5e-3)
    assert not np.allclose(batch.wp[0], batch.wp[1], atol=0.1)


def test_the_seed_decides_the_noise_draws(generator, metric, w_stats):
    targets = _synthesise(generator, _random_codes(generator, 1, seed=6))
    config = InversionConfig(steps=4)
    first, again = (project(generator, targets, metric, config, w_stats=w_stats) for _ in range(2))
    other = project(generator, targets, metric, dataclasses.replace(config, seed=7), w_stats=w_stats)
    np.testing.assert_array_equal(first.wp, again.wp)
    assert not np.allclose(first.wp, other.wp, atol=1e-6)


def test_progress_callback_sees_every_step(generator, metric, w_stats):
    targets = _synthesise(generator, _random_codes(generator, 2, seed=8))
    calls = []
    result = project(
        generator,
        targets,
        metric,
        InversionConfig(steps=7),
        w_stats=w_stats,
        progress=lambda step, total, losses: calls.append((step, total, losses.clone())),
    )
    assert [(step, total) for step, total, _ in calls] == [(step, 7) for step in range(1, 8)]
    for step, _, losses in calls:
        np.testing.assert_allclose(losses.numpy(), result.losses[:, step - 1], rtol=1e-6)


def test_init_wp_is_the_starting_point(generator, metric, w_stats):
    codes = _random_codes(generator, 2, seed=9)
    targets = _synthesise(generator, codes)
    result = project(generator, targets, metric, InversionConfig(steps=1, space="w"), w_stats=w_stats, init_wp=codes.numpy())
    np.testing.assert_array_equal(result.wp, codes.numpy())
    with pytest.raises(ValueError, match="identical rows"):
        project(generator, targets, metric, InversionConfig(steps=1), w_stats=w_stats, init_wp=codes.numpy() + np.arange(generator.num_ws)[:, None])


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


def test_bad_arguments_are_rejected(generator, metric, w_stats):
    with pytest.raises(ValueError, match="targets"):
        project(generator, torch.zeros((1, 3, 64, 64)), metric, InversionConfig(steps=1), w_stats=w_stats)
    with pytest.raises(ValueError, match="init_wp"):
        project(generator, torch.zeros((1, 3, 32, 32)), metric, InversionConfig(steps=1), w_stats=w_stats, init_wp=np.zeros((1, 3, 32)))
    with pytest.raises(ValueError, match="steps"):
        InversionConfig(steps=0)
    with pytest.raises(ValueError, match="space"):
        InversionConfig(steps=1, space="z")
