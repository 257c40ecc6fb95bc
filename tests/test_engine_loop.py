"""The projector's step loop as the GPU engine needs it: no read-back from the device inside the loop (so a step
can be captured and replayed on CUDA), and bfloat16 autocast that lands where float32 does."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.projector_fixtures import generator, metric, w_stats  # noqa: F401 (fixtures)
from tests.perceptual_fixtures import build_random_seed_perceptual
from worker.pipeline.invert import (
    InversionConfig,
    noise_tensors,
    project,
    rgb_from_images,
    step_optimizer,
)
from worker.pipeline.masks import soft_neck_mask
from worker.pipeline.refine import DiffuseConfig, refine_diffuse

READ_BACK_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
"""Tensor methods that bring a value to the host: on CUDA each one waits for the device."""
TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def synthesised_target(G, seed: int) -> torch.Tensor:
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ws = G.mapping(torch.randn((1, G.z_dim), generator=noise))
        return G.synthesis(ws, noise_mode="const")


class ReadBackCounter:
    """Counts host read-backs of tensors made by code outside torch itself, while `counting` is on."""

    def __init__(self) -> None:
        self.counting = False
        self.calls: list[str] = []

    def wrap(self, name: str, method):
        def counted(tensor, *args, **kwargs):
            if self.counting:
                frame = sys._getframe(1)
                if not frame.f_code.co_filename.startswith(TORCH_DIR):
                    self.calls.append(f"{name} at {frame.f_code.co_filename}:{frame.f_lineno}")
            return method(tensor, *args, **kwargs)

        return counted


@pytest.fixture
def read_backs(monkeypatch: pytest.MonkeyPatch) -> Iterator[ReadBackCounter]:
    counter = ReadBackCounter()
    for name in READ_BACK_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counter.wrap(name, getattr(torch.Tensor, name)))
    yield counter


def test_the_counter_sees_a_read_back(read_backs: ReadBackCounter) -> None:
    read_backs.counting = True
    float(torch.ones(()))
    torch.ones(2).tolist()
    read_backs.counting = False
    assert [call.split(" ")[0] for call in read_backs.calls] == ["__float__", "tolist"]


@pytest.mark.parametrize("config", [InversionConfig(steps=6), InversionConfig(steps=6, space="wplus", precision="bf16")])
def test_a_projector_step_reads_nothing_back(generator, metric, w_stats, read_backs, config) -> None:
    """From the end of step 1 to the end of the last step, nothing outside torch reads a tensor on the host.
    (On CPU, torch's own Adam reads its step count on the host: no device sync there, and on CUDA Adam is
    capturable and keeps it on the device.)"""

    def progress(step: int, total: int, losses: torch.Tensor) -> None:
        read_backs.counting = step < total

    result = project(generator, synthesised_target(generator, seed=1), metric, config, w_stats, progress)
    assert read_backs.calls == []
    assert np.isfinite(result.losses).all() and result.losses.shape == (1, config.steps)


@pytest.fixture(scope="module")
def diffuse_inputs(generator, tmp_path_factory) -> dict:
    """A face, the same face with another's coarse layers as the 'edit', a lower-middle neck, the seed's VGG."""
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        codes = generator.mapping(z, truncation_psi=0.7)
        edited_codes = torch.cat([codes[1:, :4], codes[:1, 4:]], dim=1)
        original, edited = rgb_from_images(generator.synthesis(torch.cat([codes[:1], edited_codes])))
    neck = np.zeros((32, 32), bool)
    neck[24:, 8:24] = True
    return {
        "G": generator, "original_wp": codes[:1].numpy(), "edited_rgb": edited, "original_rgb": original,
        "neck_mask": neck, "soft_mask": soft_neck_mask(neck),
        "perceptual": build_random_seed_perceptual(0, tmp_path_factory.mktemp("vgg")),
    }  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_diffuse_step_reads_nothing_back(diffuse_inputs, read_backs, precision) -> None:
    def progress(step: int, total: int, losses: torch.Tensor) -> None:
        read_backs.counting = step < total

    config = DiffuseConfig(steps=5, learning_rate=0.05, precision=precision)
    result = refine_diffuse(**diffuse_inputs, config=config, progress=progress)
    assert read_backs.calls == []
    assert np.isfinite(result.losses).all() and result.losses.shape == (5,)


def test_bf16_diffuse_lands_where_fp32_does(diffuse_inputs) -> None:
    fp32 = DiffuseConfig(steps=20, learning_rate=0.05)
    results = {config.precision: refine_diffuse(**diffuse_inputs, config=config)
               for config in (fp32, dataclasses.replace(fp32, precision="bf16"))}  # fmt: skip
    loss_32, loss_16 = results["fp32"].losses[-1], results["bf16"].losses[-1]
    assert abs(loss_16 - loss_32) <= 0.02 * loss_32, (loss_32, loss_16)
    assert loss_32 != loss_16 and loss_32 < results["fp32"].losses[0]
    original = torch.from_numpy(diffuse_inputs["original_rgb"]).float() / 127.5 - 1
    psnrs = [psnr(torch.from_numpy(results[p].image).float() / 127.5 - 1, original) for p in ("fp32", "bf16")]
    assert abs(psnrs[0] - psnrs[1]) <= 0.5, psnrs


def test_the_learning_rate_is_a_tensor_the_loop_refills() -> None:
    code = torch.zeros(3, requires_grad=True)
    learning_rate = torch.tensor(0.1)
    optimizer = step_optimizer([code], learning_rate)
    assert optimizer.param_groups[0]["lr"] is learning_rate
    assert optimizer.param_groups[0]["capturable"] is False  # CPU; CUDA tensors make it capturable
    code.grad = torch.ones(3)
    learning_rate.fill_(0.0)
    optimizer.step()
    assert torch.equal(code.detach(), torch.zeros(3))


def psnr(images: torch.Tensor, targets: torch.Tensor) -> float:
    """dB, for images in [-1, 1] (peak-to-peak 2)."""
    mse = float((images.clamp(-1, 1) - targets).square().mean())
    return 10.0 * math.log10(4.0 / mse)


def test_bf16_autocast_lands_where_fp32_does(generator, metric, w_stats) -> None:
    """Final loss within 2%, reconstruction PSNR within 0.5 dB. The noise regulariser and the exploration noise
    are off so that the loss is the LPIPS distance the networks compute (the regulariser is float32 in both)."""
    target = synthesised_target(generator, seed=2)
    fp32 = InversionConfig(steps=20, noise_regularization=0.0, w_noise_factor=0.0)
    outcomes = {}
    for config in (fp32, dataclasses.replace(fp32, precision="bf16")):
        result = project(generator, target, metric, config, w_stats)
        with torch.no_grad():
            images = generator.synthesis(torch.from_numpy(result.wp), noise=noise_tensors(result.noise, "cpu"))
        outcomes[config.precision] = (float(result.final_losses[0]), psnr(images, target))
    (loss_32, psnr_32), (loss_16, psnr_16) = outcomes["fp32"], outcomes["bf16"]
    assert abs(loss_16 - loss_32) <= 0.02 * loss_32, outcomes
    assert abs(psnr_16 - psnr_32) <= 0.5, outcomes
    assert loss_32 != loss_16, "bf16 must actually run in bfloat16"
    assert loss_32 < 0.5 * float(project(generator, target, metric, dataclasses.replace(fp32, steps=1), w_stats).losses[0, 0])
