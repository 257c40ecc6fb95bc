"""Invert stage: find the W+ code whose StyleGAN2 image reproduces an aligned crop.

Adam on a W+ code (N x num_ws x w_dim), started from `w_avg` or an encoder's code, with the
learning-rate ramp of NVIDIA's StyleGAN2 projector (linear warm-up, cosine ramp-down). The
loss is LPIPS on images area-downsampled to 256x256 (as the projector does) plus pixel MSE at
full resolution.

Noise: the generator's per-layer noise buffers stay FIXED (`noise_mode="const"`). They are
shared by every sample of a batch, so optimising them (as the projector does for one image)
would couple the crops of a batch; fixed noise keeps each crop's result independent of its
batch-mates.

Batching: each crop's code is its own Adam parameter and the batch loss is the SUM of the
per-crop losses, so a crop's gradient, Adam moments and steps are exactly those of a single
run. A crop that plateaus stops (its code is frozen and no longer synthesised) while the others
go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

PERCEPTUAL_RESOLUTION = 256
"""VGG was trained on 224px images: LPIPS compares at 256, as NVIDIA's projector does."""


class PerceptualLoss(Protocol):
    """What the inversion needs of a perceptual metric (`worker.models.lpips.LPIPS` is one)."""

    def features(self, images: torch.Tensor) -> list[torch.Tensor]: ...

    def distance(self, features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor: ...


ProgressCallback = Callable[[int, int, np.ndarray], None]
"""progress(step, total_steps, losses): after every step (1-based); losses: N float64, each
crop's latest loss (a crop that stopped keeps its last one)."""


@dataclass(frozen=True)
class InversionConfig:
    """One optimisation schedule.

    steps: the most Adam steps; the lr ramps are fractions of it.
    learning_rate, lr_rampup, lr_rampdown: the projector's schedule (peak lr, warm-up and cosine
        ramp-down lengths as fractions of `steps`).
    w_noise_factor, w_noise_ramp: the projector's exploration noise on the code, w_std * factor,
        decaying quadratically to 0 at `w_noise_ramp` of the steps; 0 disables it.
    w_std_samples: mapping samples for estimating w_std (only with w_noise_factor > 0).
    perceptual_weight, mse_weight: loss = perceptual_weight * LPIPS + mse_weight * pixel MSE.
    plateau_patience, plateau_tolerance: a crop stops once its best loss has not improved by more
        than `plateau_tolerance` (relative) for `plateau_patience` steps; patience None never stops.
    seed: seeds the code noise (each crop gets the same stream as a single run would).
    """

    steps: int
    learning_rate: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    w_noise_factor: float = 0.0
    w_noise_ramp: float = 0.75
    w_std_samples: int = 10_000
    perceptual_weight: float = 1.0
    mse_weight: float = 1.0
    plateau_patience: int | None = 25
    plateau_tolerance: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.plateau_patience is not None and self.plateau_patience < 1:
            raise ValueError(f"plateau_patience must be >= 1 or None, got {self.plateau_patience}")


INVERSION_PRESETS: dict[str, InversionConfig] = {
    "fast": InversionConfig(steps=100),
    "quality": InversionConfig(steps=400, plateau_patience=50),
    # NVIDIA's StyleGAN2 projector schedule, run to the end: the seed method's reference point.
    "paper": InversionConfig(steps=1000, w_noise_factor=0.05, plateau_patience=None),
}


@dataclass(frozen=True)
class InversionResult:
    """wp: N x num_ws x w_dim float32 codes. losses: N x steps_max float64 per-step losses (NaN after a
    crop stopped). steps_run: N int, Adam steps each crop took. stopped_early: N bool, plateau stops."""

    wp: np.ndarray
    losses: np.ndarray
    steps_run: np.ndarray
    stopped_early: np.ndarray


def projector_learning_rate(step: int, config: InversionConfig) -> float:
    """Learning rate at 0-based `step`: linear warm-up, then flat, then cosine ramp-down to 0."""
    t = step / config.steps
    ramp_down = min(1.0, (1.0 - t) / config.lr_rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp_down * math.pi)
    ramp *= min(1.0, t / config.lr_rampup) if config.lr_rampup > 0 else 1.0
    return config.learning_rate * ramp


def code_noise_scale(step: int, w_std: float, config: InversionConfig) -> float:
    """Standard deviation of the exploration noise added to the code at 0-based `step`."""
    t = step / config.steps
    return w_std * config.w_noise_factor * max(0.0, 1.0 - t / config.w_noise_ramp) ** 2


@torch.no_grad()
def estimate_w_std(G: torch.nn.Module, samples: int, seed: int) -> float:
    """RMS distance of mapped random z from their mean, as the projector measures it (untruncated)."""
    device = G.w_avg.device
    generator = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn((samples, G.z_dim), generator=generator, device=device)
    w = G.mapping(z, truncation_psi=1.0)[:, 0].double()
    return float((w - w.mean(dim=0)).square().sum(dim=1).mean().sqrt())


def targets_from_rgb(crops: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """N crops, each SxSx3 uint8 RGB, -> Nx3xSxS float32 in [-1, 1] on `device`."""
    batch = torch.from_numpy(np.stack([np.asarray(crop, dtype=np.uint8) for crop in crops]))
    return (batch.to(device).permute(0, 3, 1, 2).float() / 127.5) - 1.0


def rgb_from_images(images: torch.Tensor) -> np.ndarray:
    """Nx3xSxS float images in [-1, 1] -> NxSxSx3 uint8 RGB (clipped, rounded)."""
    pixels = ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def perceptual_input(images: torch.Tensor) -> torch.Tensor:
    """Area-downsample Nx3xSxS images to 256x256 when larger (the projector's rule)."""
    if images.shape[-1] > PERCEPTUAL_RESOLUTION:
        return F.interpolate(images, size=(PERCEPTUAL_RESOLUTION, PERCEPTUAL_RESOLUTION), mode="area")
    return images


class _PlateauTracker:
    """Per-crop early stopping on the best loss seen."""

    def __init__(self, count: int, patience: int | None, tolerance: float) -> None:
        self.patience = patience
        self.tolerance = tolerance
        self.best = np.full(count, np.inf)
        self.stale = np.zeros(count, dtype=np.int64)

    def update(self, index: int, loss: float) -> bool:
        """Record crop `index`'s loss; True when it has plateaued."""
        if loss < self.best[index] * (1.0 - self.tolerance):
            self.best[index] = loss
            self.stale[index] = 0
        else:
            self.stale[index] += 1
        return self.patience is not None and self.stale[index] >= self.patience


def invert_wplus(
    G: torch.nn.Module,
    targets: torch.Tensor,
    perceptual_loss: PerceptualLoss,
    config: InversionConfig = INVERSION_PRESETS["fast"],
    progress: ProgressCallback | None = None,
    init_wp: torch.Tensor | np.ndarray | None = None,
) -> InversionResult:
    """Optimise one W+ code per target so that `G.synthesis(wp, noise_mode="const")` reproduces it.

    G: a StyleGAN2 generator in eval mode (its parameters receive no gradients).
    targets: Nx3xSxS float in [-1, 1] on G's device, S = G.img_resolution.
    perceptual_loss: built once by the caller (LPIPS), on G's device, frozen.
    init_wp: N x num_ws x w_dim starting codes (an encoder's output); default: w_avg for every layer.
    """
    device = G.w_avg.device
    count = targets.shape[0]
    expected = (3, G.img_resolution, G.img_resolution)
    if targets.ndim != 4 or tuple(targets.shape[1:]) != expected:
        raise ValueError(f"targets must be N x {expected[0]} x {expected[1]} x {expected[2]}, got {tuple(targets.shape)}")
    targets = targets.to(device=device, dtype=torch.float32)
    if init_wp is None:
        start = G.w_avg.detach().float().expand(count, G.num_ws, G.w_dim)
    else:
        start = torch.as_tensor(init_wp, dtype=torch.float32, device=device)
        if tuple(start.shape) != (count, G.num_ws, G.w_dim):
            raise ValueError(f"init_wp must be {count} x {G.num_ws} x {G.w_dim}, got {tuple(start.shape)}")

    codes = [start[index : index + 1].clone().requires_grad_(True) for index in range(count)]
    optimizer = torch.optim.Adam(codes, betas=(0.9, 0.999), lr=config.learning_rate)
    with torch.no_grad():
        target_features = perceptual_loss.features(perceptual_input(targets))
    w_std = estimate_w_std(G, config.w_std_samples, config.seed) if config.w_noise_factor > 0 else 0.0
    noise_streams = [torch.Generator(device=device).manual_seed(config.seed) for _ in range(count)]

    losses = np.full((count, config.steps), np.nan)
    latest = np.full(count, np.nan)
    steps_run = np.zeros(count, dtype=np.int64)
    stopped_early = np.zeros(count, dtype=bool)
    plateau = _PlateauTracker(count, config.plateau_patience, config.plateau_tolerance)
    active = list(range(count))

    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = projector_learning_rate(step, config)
        noise_scale = code_noise_scale(step, w_std, config)
        ws = torch.cat([codes[index] for index in active])
        if noise_scale > 0:
            noise = [torch.randn(codes[i].shape, generator=noise_streams[i], device=device) for i in active]
            ws = ws + torch.cat(noise) * noise_scale
        images = G.synthesis(ws, noise_mode="const")
        per_crop = _reconstruction_loss(images, targets, target_features, active, perceptual_loss, config)
        gradients = torch.autograd.grad(per_crop.sum(), [codes[index] for index in active])
        optimizer.zero_grad(set_to_none=True)
        for index, gradient in zip(active, gradients, strict=True):
            codes[index].grad = gradient
        optimizer.step()

        step_losses = per_crop.detach().double().cpu().numpy()
        for index, loss in zip(active, step_losses, strict=True):
            losses[index, step] = latest[index] = loss
            steps_run[index] = step + 1
            if plateau.update(index, float(loss)):
                stopped_early[index] = step + 1 < config.steps
        if progress is not None:
            progress(step + 1, config.steps, latest.copy())
        active = [index for index in active if not stopped_early[index]]
        if not active:
            break

    wp = torch.cat([code.detach() for code in codes]).cpu().numpy().astype(np.float32)
    return InversionResult(wp=wp, losses=losses, steps_run=steps_run, stopped_early=stopped_early)


def _reconstruction_loss(
    images: torch.Tensor,
    targets: torch.Tensor,
    target_features: list[torch.Tensor],
    active: list[int],
    perceptual_loss: PerceptualLoss,
    config: InversionConfig,
) -> torch.Tensor:
    """Per-crop loss (len(active) float32) of `images` against the `active` rows of the targets:
    weighted LPIPS at <= 256px plus full-resolution pixel MSE."""
    if len(active) < targets.shape[0]:
        rows = torch.tensor(active, device=targets.device)
        targets = targets.index_select(0, rows)
        target_features = [stage.index_select(0, rows) for stage in target_features]
    images = images.float()
    perceptual = perceptual_loss.distance(perceptual_loss.features(perceptual_input(images)), target_features)
    mse = (images - targets).square().mean(dim=(1, 2, 3))
    return config.perceptual_weight * perceptual + config.mse_weight * mse
