"""Capture-ready steps: every per-step input is read on the device at a device step counter, so one captured step
replays as step k at the k-th replay. On the CPU the runner is eager; the capture itself needs CUDA (see
`worker.pipeline.steps`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tests.projector_fixtures import generator, metric, w_stats  # noqa: F401 (fixtures)
from tests.test_batching import synthesised_targets
from worker.pipeline.invert import (
    InversionConfig,
    ProjectorSteps,
    code_noise_scale,
    noise_regularization,
    perceptual_input,
    projector_learning_rate,
    renormalize_noise_,
)
from worker.pipeline.portrait import PipelineConfig
from worker.pipeline.refine import DiffuseConfig
from worker.pipeline.refine import DiffuseSteps
from worker.pipeline.steps import (
    CAPTURE_WARMUP_STEPS,
    capture_warmup,
    record_loss,
    run_steps,
    run_with_capture,
    step_counter,
)
from chinfix.settings import Settings
from tests.perceptual_fixtures import build_random_seed_perceptual
from tests.test_batching import diffuse_crop

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_capture_runs_on_cuda_only_and_only_when_replays_follow_the_warm_up() -> None:
    assert capture_warmup(CUDA, "auto", 250) == CAPTURE_WARMUP_STEPS
    assert capture_warmup(CUDA, "auto", CAPTURE_WARMUP_STEPS + 2) == CAPTURE_WARMUP_STEPS
    assert capture_warmup(CUDA, "auto", CAPTURE_WARMUP_STEPS + 1) is None
    assert capture_warmup(CUDA, "off", 250) is None
    assert capture_warmup(CPU, "auto", 250) is None
    with pytest.raises(ValueError, match="capture must be one of"):
        capture_warmup(CUDA, "always", 250)
    with pytest.raises(ValueError, match="capture must be one of"):
        InversionConfig(steps=5, capture="always")


def test_the_capture_setting_reaches_both_loops() -> None:
    config = PipelineConfig.from_settings(Settings(capture="off"))
    assert (config.inversion.capture, config.diffuse.capture) == ("off", "off")
    assert (InversionConfig(steps=5).capture, DiffuseConfig().capture) == ("auto", "auto") == (Settings().capture,) * 2


def test_the_runner_reports_each_steps_own_losses_and_the_counter_reaches_the_end() -> None:
    """A step that writes 10 x its counter: progress sees row k holding step k's value when step k has run."""
    counter = step_counter(CPU)
    losses = torch.full((5, 2), -1.0)

    def step() -> None:
        record_loss(losses, counter, counter.float().repeat(2) * 10)

    seen = []
    run_steps(step, losses, lambda step, total, row: seen.append((step, total, row.clone())), capture="auto")
    assert [(step, total) for step, total, _ in seen] == [(k, 5) for k in range(1, 6)]
    assert [row.tolist() for _, _, row in seen] == [[10.0 * k] * 2 for k in range(5)]
    assert int(counter) == 5


def nth_jitter(G, config: InversionConfig, shape: torch.Size, step: int) -> torch.Tensor:
    """Step `step`'s exploration noise as the projector draws it inside its loop: a stream seeded with the config's
    seed draws the noise maps in layer order, then one N(0, 1) code-shaped draw per step."""
    stream = torch.Generator().manual_seed(config.seed)
    for side in G.synthesis.noise_resolutions().values():
        torch.randn((1, 1, side, side), generator=stream)
    for _ in range(step):
        torch.randn(shape, generator=stream)
    return torch.randn(shape, generator=stream)


def reference_step(loop: ProjectorSteps, step: int, w_std: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Step `step` of the projector written out with Python numbers from a copy of `loop`'s state: its lr and
    exploration noise looked up by `step`, Adam's update by its formula. (loss, codes, noise maps) after the step."""
    G, config = loop.G, loop.config
    codes = loop.codes.detach().clone().requires_grad_(True)
    noise = {name: maps.detach().clone().requires_grad_(True) for name, maps in loop.noise.items()}
    jitter = nth_jitter(G, config, codes.shape[1:], step)
    ws = codes + jitter * code_noise_scale(step, w_std, config)
    images = G.synthesis(ws.expand(codes.shape[0], G.num_ws, G.w_dim), noise=noise)
    distance = loop.perceptual_loss.distance(loop.perceptual_loss.features(perceptual_input(images)), loop.target_features)
    loss = distance + config.noise_regularization * noise_regularization(noise.values())
    parameters = [codes, *noise.values()]
    gradients = torch.autograd.grad(loss.sum(), parameters)
    learning_rate = projector_learning_rate(step, config)
    with torch.no_grad():
        for parameter, gradient, original in zip(parameters, gradients, [loop.codes, *loop.noise.values()]):
            state = loop.optimizer.state.get(original, {})
            exp_avg = state.get("exp_avg", torch.zeros_like(gradient)) * 0.9 + 0.1 * gradient
            exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(gradient)) * 0.999 + 0.001 * gradient.square()
            t = int(state.get("step", 0)) + 1
            denominator = exp_avg_sq.sqrt() / math.sqrt(1 - 0.999**t) + 1e-8
            parameter -= learning_rate / (1 - 0.9**t) * exp_avg / denominator
        renormalize_noise_(noise.values())
    return loss.detach(), codes.detach(), {name: maps.detach() for name, maps in noise.items()}


@pytest.mark.parametrize("space", ["w", "wplus"])
def test_every_projector_step_is_the_step_its_counter_names(generator, metric, w_stats, space) -> None:
    """Before each step the state is copied and that step is recomputed by hand with its Python index: the learning
    rate (ramping every step here), the exploration noise (a fresh draw per step, its scale decaying every step) and
    the losses row must be the k-th. A stale or shifted index, or noise drawn again, fails this."""
    config = InversionConfig(steps=8, space=space, lr_rampup=0.5, lr_rampdown=0.5, w_noise_factor=0.5, w_noise_ramp=0.9)
    targets = torch.cat(synthesised_targets(generator, 2, seed=3))
    loop = ProjectorSteps.start(generator, targets, metric, config, w_stats, init_wp=None)
    assert loop.jitters.shape[0] == 8  # the scale is non-zero at every step of this schedule
    for step in range(config.steps):
        expected_loss, expected_codes, expected_noise = reference_step(loop, step, w_stats.w_std)
        loop.step()
        assert int(loop.counter) == step + 1
        np.testing.assert_allclose(loop.losses[step].numpy(), expected_loss.numpy(), rtol=1e-5)
        np.testing.assert_allclose(loop.codes.detach().numpy(), expected_codes.numpy(), atol=1e-5)
        for name, maps in loop.noise.items():
            np.testing.assert_allclose(maps.detach().numpy(), expected_noise[name].numpy(), atol=1e-4)


def test_exploration_noise_is_drawn_only_while_it_counts(generator, metric, w_stats) -> None:
    """After the noise ramp the scale is 0: those steps reuse the last draw (times 0), so the steps without noise
    need no memory for it."""
    config = InversionConfig(steps=8, w_noise_ramp=0.5)
    loop = ProjectorSteps.start(generator, synthesised_targets(generator, 1, seed=4)[0], metric, config, w_stats, None)
    assert loop.jitters.shape[0] == 4 and float(loop.noise_scales[4:].abs().sum()) == 0.0
    no_noise = ProjectorSteps.start(
        generator, synthesised_targets(generator, 1, seed=4)[0], metric, dataclasses.replace(config, w_noise_factor=0.0), w_stats, None
    )
    assert no_noise.jitters.shape[0] == 1


def record_without_running(captured: list):
    """A stand-in for `cuda_graph_replay` with a CUDA capture's semantics: capturing runs nothing, each replay runs
    the recorded step."""

    def capture(step):
        captured.append(step)
        return step

    return capture


def fail_to_capture(step):
    raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture(params=["projector", "diffuse"])
def fresh_loop(request, generator, metric, w_stats, tmp_path):
    """Builds a new loop of 7 steps, the same each call: the projector's (2 crops) or the diffuse's (2 crops)."""
    if request.param == "projector":
        targets = torch.cat(synthesised_targets(generator, 2, seed=5))
        return lambda: ProjectorSteps.start(generator, targets, metric, InversionConfig(steps=7), w_stats, None)
    perceptual = build_random_seed_perceptual(0, tmp_path)
    crops = [diffuse_crop(generator, seed)[1] for seed in (1, 2)]
    return lambda: DiffuseSteps.start(generator, crops, perceptual, DiffuseConfig(steps=7, learning_rate=0.05))


def final_state(loop) -> list[torch.Tensor]:
    noise = list(getattr(loop, "noise", {}).values())
    return [loop.codes.detach(), *[maps.detach() for maps in noise], loop.losses]


@pytest.mark.parametrize("capture_step", ["records", "fails"])
def test_warm_up_capture_and_replays_run_the_schedule_an_eager_run_does(fresh_loop, capture_step, caplog) -> None:
    """3 eager steps, one captured (running nothing), 4 replays: the same codes, maps and losses as 7 eager steps, and
    progress after every step. A capture that raises leaves the rest to eager steps, with the same numbers."""
    eager = fresh_loop()
    run_steps(eager.step, eager.losses, None, capture="off")
    captured: list = []
    loop = fresh_loop()
    seen = []
    run_with_capture(
        loop.step, loop.losses, lambda step, total, row: seen.append((step, total, row.clone())), CAPTURE_WARMUP_STEPS,
        capture_step=record_without_running(captured) if capture_step == "records" else fail_to_capture,
    )  # fmt: skip
    assert [(step, total) for step, total, _ in seen] == [(k, 7) for k in range(1, 8)]
    assert all(torch.equal(row, loop.losses[k]) for k, (_, _, row) in enumerate(seen))
    assert int(loop.counter) == 7
    for got, expected in zip(final_state(loop), final_state(eager), strict=True):
        assert torch.equal(got, expected)
    if capture_step == "records":
        assert captured == [loop.step]
    else:
        assert "capturing the optimisation step failed" in caplog.text
