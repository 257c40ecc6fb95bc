"""Invert stage: NVIDIA's StyleGAN2 projector, the inversion the paper's real-photo codes come from.

One w per crop (W space: tiled over every style layer) starts at the mean of 10,000 mapped z and is optimised
with Adam (lr 0.1, linear warm-up over the first 5% of the steps, cosine ramp-down over the last 25%), jittered
by exploration noise of 0.05 * w_std that decays quadratically to zero at 75% of the steps. The generator's
per-layer noise inputs are optimised with it: they start as fresh N(0, 1) maps and are re-normalised to zero
mean and unit variance after every step. The loss is the LPIPS distance on images area-downsampled to 256 px
plus 1e5 times the noise regulariser (squared 1-pixel auto-correlations over a pyramid of each noise map).
There is no early stop: the learning rate ramps to zero at the last step, and the schedule is the step count.

W+ (`space="wplus"`, one w per style layer) is an option, not the paper's.

Batching: every crop has its own code, noise maps and random stream (seeded alike), and the batch loss is the
SUM of the per-crop losses; Adam works element by element, so each crop follows exactly its single run (up to
the rounding of batched convolutions).

The step loop reads nothing back from the device, and a step is captured once and replayed on CUDA
(`worker.pipeline.steps`, `CHINFIX_CAPTURE`): per-step losses stay on the device until the end (a progress callback
that reads its `losses` argument syncs, at its own pace); the learning rate and the exploration-noise scale are
read from device schedules at a device step counter; Adam is `capturable` on CUDA (its step count stays on the
device); the exploration noise is drawn before the loop from each crop's stream, one draw per step in the order the
projector draws it inside its loop, and read at the counter (scaled to 0 after its ramp).

Precision: `precision="bf16"` runs the generator and VGG under bfloat16 autocast; the codes, noise maps, Adam
state and the loss stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from chinfix.settings import Settings
from worker.pipeline.steps import (
    Capture,
    ProgressCallback,
    at_step,
    check_capture,
    record_loss,
    run_steps,
    set_gradients,
    step_counter,
)

PERCEPTUAL_RESOLUTION = 256
"""VGG was trained on 224px images: LPIPS compares at 256, as NVIDIA's projector does."""

W_STATISTICS_SAMPLES = 10_000
W_STATISTICS_SEED = 123
"""The projector's w_avg and w_std: 10,000 z from numpy's RandomState(123), mapped without truncation."""

NOISE_REGULARIZATION_MIN_SIDE = 8
"""The regulariser's pyramid halves each noise map down to this side."""

Space = Literal["w", "wplus"]
SPACES: tuple[str, ...] = ("w", "wplus")
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class PerceptualLoss(Protocol):
    """What the inversion needs of a perceptual metric (`worker.models.lpips.LPIPS` is one)."""

    def features(self, images: torch.Tensor) -> list[torch.Tensor]: ...

    def distance(self, features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor: ...


@dataclass(frozen=True)
class InversionConfig:
    """One projector schedule.

    steps: Adam steps; the ramps below are fractions of it.
    space: "w" (one w tiled over the style layers, the projector's) or "wplus" (one w per layer).
    learning_rate, lr_rampup, lr_rampdown: peak lr, linear warm-up and cosine ramp-down lengths.
    w_noise_factor, w_noise_ramp: exploration noise on the code, w_std * factor, decaying quadratically to 0
        at `w_noise_ramp` of the steps; 0 disables it.
    noise_regularization: weight of the noise maps' auto-correlation penalty.
    seed: seeds the initial noise maps and the exploration noise (each crop its own stream, seeded alike).
    precision: "fp32", or "bf16": generator and VGG under bfloat16 autocast (codes and Adam state float32).
    capture: "auto": on CUDA, a few eager steps, then one step captured as a CUDA graph and replayed; "off": eager
        (`worker.pipeline.steps`; the CPU is always eager).
    """

    steps: int
    space: Space = "w"
    learning_rate: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    w_noise_factor: float = 0.05
    w_noise_ramp: float = 0.75
    noise_regularization: float = 1e5
    seed: int = 303
    precision: Precision = "fp32"
    capture: Capture = Settings.model_fields["capture"].default

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        check_capture(self.capture)
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


INVERSION_PRESETS: dict[str, InversionConfig] = {
    "fast": InversionConfig(steps=250),
    "quality": InversionConfig(steps=500),
    # NVIDIA's projector as the paper ran it.
    "paper": InversionConfig(steps=1000),
}


@dataclass(frozen=True)
class WStatistics:
    """Where the projector starts and how far it jitters: w_avg (w_dim float32, on the generator's device), the
    mean of the mapped samples, and w_std, their RMS distance from it."""

    w_avg: torch.Tensor
    w_std: float


@dataclass(frozen=True)
class InversionResult:
    """wp: N x num_ws x w_dim float32 codes (rows identical in W space). noise: the optimised noise maps by layer
    name, each N x 1 x R x R float32. losses: N x steps float64, the loss of every step (LPIPS + weighted
    noise regulariser, with the exploration noise of that step)."""

    wp: np.ndarray
    noise: dict[str, np.ndarray]
    losses: np.ndarray

    @property
    def final_losses(self) -> np.ndarray:
        """N float64: each crop's loss at the last step."""
        return self.losses[:, -1]


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
def w_statistics(G: torch.nn.Module, samples: int = W_STATISTICS_SAMPLES, seed: int = W_STATISTICS_SEED) -> WStatistics:
    """The projector's mean and spread of W for generator `G` (untruncated mapping of `samples` z)."""
    z = np.random.RandomState(seed).randn(samples, G.z_dim)
    w = G.mapping(torch.from_numpy(z).to(G.w_avg.device))[:, 0].double()
    w_avg = w.mean(dim=0)
    w_std = float((w - w_avg).square().sum(dim=1).mean().sqrt())
    return WStatistics(w_avg=w_avg.float(), w_std=w_std)


def targets_from_rgb(crops: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """N crops, each SxSx3 uint8 RGB, -> Nx3xSxS float32 in [-1, 1] on `device`."""
    batch = torch.from_numpy(np.stack([np.asarray(crop, dtype=np.uint8) for crop in crops]))
    return (batch.to(device).permute(0, 3, 1, 2).float() / 127.5) - 1.0


def rgb_from_images(images: torch.Tensor) -> np.ndarray:
    """Nx3xSxS float images in [-1, 1] -> NxSxSx3 uint8 RGB (clipped, rounded)."""
    pixels = ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def perceptual_input(images: torch.Tensor) -> torch.Tensor:
    """Area-downsample Nx3xSxS images to 256x256 when larger (the projector's rule).

    The projector feeds its VGG [0, 255] images, which that network maps to [-1, 1] itself; chinfix's LPIPS takes
    [-1, 1] directly, and area averaging commutes with the affine change of range, so the two see the same input.
    """
    if images.shape[-1] > PERCEPTUAL_RESOLUTION:
        return F.interpolate(images, size=(PERCEPTUAL_RESOLUTION, PERCEPTUAL_RESOLUTION), mode="area")
    return images


def noise_regularization(noise_maps: Iterable[torch.Tensor]) -> torch.Tensor:
    """The projector's noise penalty per sample (N float32) of maps each N x 1 x R x R: for every map and every
    level of its 2x average-pooled pyramid down to 8 px (a smaller map counts once), the squared means of the
    map times itself shifted circularly by one pixel in x, and in y."""
    total = torch.zeros(())
    for maps in noise_maps:
        level = maps
        while True:
            for dim in (3, 2):
                total = total + (level * level.roll(1, dims=dim)).mean(dim=(1, 2, 3)).square()
            if level.shape[2] <= NOISE_REGULARIZATION_MIN_SIDE:
                break
            level = F.avg_pool2d(level, kernel_size=2)
    return total


@torch.no_grad()
def renormalize_noise_(noise_maps: Iterable[torch.Tensor]) -> None:
    """Shift and scale each N x 1 x R x R map, per sample, to zero mean and unit mean square, in place."""
    for maps in noise_maps:
        maps -= maps.mean(dim=(1, 2, 3), keepdim=True)
        maps *= maps.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()


def project(
    G: torch.nn.Module,
    targets: torch.Tensor,
    perceptual_loss: PerceptualLoss,
    config: InversionConfig = INVERSION_PRESETS["fast"],
    w_stats: WStatistics | None = None,
    progress: ProgressCallback | None = None,
    init_wp: torch.Tensor | np.ndarray | None = None,
) -> InversionResult:
    """Find each target's code and noise maps, as NVIDIA's projector does (see the module docstring).

    G: a StyleGAN2 generator in eval mode (its parameters receive no gradients).
    targets: Nx3xSxS float in [-1, 1], S = G.img_resolution.
    perceptual_loss: built once by the caller (LPIPS), on G's device, frozen.
    w_stats: `w_statistics(G)`, computed once per generator by its owner; computed here when None.
    init_wp: N x num_ws x w_dim starting codes (an encoder's) instead of w_avg; rows identical in W space.
    """
    loop = ProjectorSteps.start(G, targets, perceptual_loss, config, w_stats, init_wp)
    run_steps(loop.step, loop.losses, progress, config.capture)
    count = loop.codes.shape[0]
    wp = loop.codes.detach().expand(count, G.num_ws, G.w_dim).cpu().numpy().astype(np.float32)
    noise_maps = {name: maps.detach().cpu().numpy().astype(np.float32) for name, maps in loop.noise.items()}
    return InversionResult(wp=wp, noise=noise_maps, losses=loop.losses.T.double().cpu().numpy())


@dataclass
class ProjectorSteps:
    """The state of one projector run and its step (`steps.run_steps` runs it; see `worker.pipeline.steps`).

    codes: N x 1 (W) or N x num_ws (W+) x w_dim float32 leaf; noise: N x 1 x R x R float32 leaves by layer name.
    learning_rates, noise_scales: steps float32 schedules; jitters: K x N x layers x w_dim, the exploration noise of
    the first K steps (those with a non-zero scale; later steps reuse the last, scaled by 0); learning_rate: the 0-d
    tensor Adam reads; counter: the device step counter; losses: steps x N float32, each step's loss.
    """

    G: torch.nn.Module
    perceptual_loss: PerceptualLoss
    config: InversionConfig
    target_features: list[torch.Tensor]
    codes: torch.Tensor
    noise: dict[str, torch.Tensor]
    learning_rates: torch.Tensor
    noise_scales: torch.Tensor
    jitters: torch.Tensor
    learning_rate: torch.Tensor
    optimizer: torch.optim.Adam
    counter: torch.Tensor
    losses: torch.Tensor

    @classmethod
    def start(
        cls,
        G: torch.nn.Module,
        targets: torch.Tensor,
        perceptual_loss: PerceptualLoss,
        config: InversionConfig,
        w_stats: WStatistics | None,
        init_wp: torch.Tensor | np.ndarray | None,
    ) -> ProjectorSteps:
        """Everything before the first step: codes, noise maps, schedules, the pre-drawn exploration noise, Adam."""
        device = G.w_avg.device
        count = targets.shape[0]
        expected = (3, G.img_resolution, G.img_resolution)
        if targets.ndim != 4 or tuple(targets.shape[1:]) != expected:
            raise ValueError(f"targets must be N x {expected[0]} x {expected[1]} x {expected[2]}, got {tuple(targets.shape)}")
        targets = targets.to(device=device, dtype=torch.float32)
        w_stats = w_stats if w_stats is not None else w_statistics(G)
        codes = _starting_codes(G, count, config.space, w_stats, init_wp).requires_grad_(True)
        # One stream per crop, all seeded alike: a crop draws the same numbers in a batch as alone.
        streams = [torch.Generator(device=device).manual_seed(config.seed) for _ in range(count)]
        noise = _initial_noise_maps(G.synthesis.noise_resolutions(), streams, device)
        scales = [code_noise_scale(step, w_stats.w_std, config) for step in range(config.steps)]
        rates = [projector_learning_rate(step, config) for step in range(config.steps)]
        learning_rates = torch.tensor(rates, device=device)
        learning_rate = learning_rates[0].clone()
        with torch.no_grad(), autocast(device, config.precision):
            target_features = [stage.float() for stage in perceptual_loss.features(perceptual_input(targets))]
        return cls(
            G=G,
            perceptual_loss=perceptual_loss,
            config=config,
            target_features=target_features,
            codes=codes,
            noise=noise,
            learning_rates=learning_rates,
            noise_scales=torch.tensor(scales, device=device),
            jitters=exploration_jitters(streams, codes.shape[1:], jittered_steps(scales), device),
            learning_rate=learning_rate,
            optimizer=step_optimizer([codes, *noise.values()], learning_rate),
            counter=step_counter(device),
            losses=torch.empty((config.steps, count), device=device),
        )

    def step(self) -> None:
        """One projector step, the `counter`-th: every per-step input is read on the device at the counter."""
        G, config, count = self.G, self.config, self.codes.shape[0]
        self.learning_rate.copy_(at_step(self.learning_rates, self.counter))
        jitter = at_step(self.jitters, self.counter.clamp(max=self.jitters.shape[0] - 1))
        ws = self.codes + jitter * at_step(self.noise_scales, self.counter)
        with autocast(self.counter.device, config.precision):
            images = G.synthesis(ws.expand(count, G.num_ws, G.w_dim), noise=self.noise).float()
            features = [stage.float() for stage in self.perceptual_loss.features(perceptual_input(images))]
        distance = self.perceptual_loss.distance(features, self.target_features)
        loss = distance + config.noise_regularization * noise_regularization(self.noise.values())
        set_gradients(loss.sum(), [self.codes, *self.noise.values()])
        self.optimizer.step()
        renormalize_noise_(self.noise.values())
        record_loss(self.losses, self.counter, loss)


def jittered_steps(noise_scales: Sequence[float]) -> int:
    """How many leading steps draw exploration noise that counts: those before the scale reaches 0 (at least 1)."""
    return max(1, sum(scale > 0 for scale in noise_scales))


def exploration_jitters(
    streams: Sequence[torch.Generator], shape: torch.Size, steps: int, device: torch.device
) -> torch.Tensor:
    """steps x N x shape: crop i's exploration noise of each step, drawn from streams[i] one step at a time, as the
    projector draws it inside its loop (after the noise maps), so the numbers are those of an eager run."""
    per_crop = [[torch.randn(shape, generator=stream, device=device) for _ in range(steps)] for stream in streams]
    return torch.stack([torch.stack(draws) for draws in per_crop], dim=1)


def step_optimizer(parameters: list[torch.Tensor], learning_rate: torch.Tensor) -> torch.optim.Adam:
    """The projector's Adam (betas 0.9, 0.999) with its learning rate a device tensor the loop refills. On CUDA it
    is `capturable`: its step count stays on the device, so a step reads nothing back (CPU Adam reads its step
    count on the host, which is no device sync, and torch allows `capturable` only on accelerators)."""
    capturable = learning_rate.device.type == "cuda"
    return torch.optim.Adam(parameters, lr=learning_rate, betas=(0.9, 0.999), capturable=capturable)


def loop_precision(precision: str) -> Precision:
    """The optimisation loops' precision for a `CHINFIX_PRECISION`: fp16 is the generator's own (NVIDIA's float16
    blocks, float32 loops); only bf16 is an autocast of the loops."""
    return "bf16" if precision == "bf16" else "fp32"


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """bfloat16 autocast for `precision="bf16"` (a no-op context for fp32). Its cast cache is off: a captured step
    must not keep casts made at capture time (and it would hold nothing here: the networks' weights need no grad)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


def noise_tensors(noise: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]:
    """An `InversionResult.noise` as float32 tensors on `device`, for `G.synthesis(ws, noise=...)`."""
    return {name: torch.from_numpy(maps).to(device=device, dtype=torch.float32) for name, maps in noise.items()}


def _starting_codes(
    G: torch.nn.Module, count: int, space: Space, w_stats: WStatistics, init_wp: torch.Tensor | np.ndarray | None
) -> torch.Tensor:
    """N x 1 x w_dim (W) or N x num_ws x w_dim (W+) float32 codes to optimise, fresh tensors."""
    layers = 1 if space == "w" else G.num_ws
    device = G.w_avg.device
    if init_wp is None:
        return w_stats.w_avg.to(device).reshape(1, 1, G.w_dim).repeat(count, layers, 1)
    start = torch.as_tensor(init_wp, dtype=torch.float32, device=device)
    if tuple(start.shape) != (count, G.num_ws, G.w_dim):
        raise ValueError(f"init_wp must be {count} x {G.num_ws} x {G.w_dim}, got {tuple(start.shape)}")
    if space == "w":
        if not torch.equal(start, start[:, :1].expand_as(start)):
            raise ValueError("init_wp must have identical rows to start a W-space inversion")
        return start[:, :1].clone()
    return start.clone()


def _initial_noise_maps(
    resolutions: dict[str, int], streams: Sequence[torch.Generator], device: torch.device
) -> dict[str, torch.Tensor]:
    """N x 1 x R x R N(0, 1) maps per noise input, crop i's drawn from streams[i] in layer order (the order in which
    the projector draws them), as leaf tensors to optimise."""
    per_crop = [
        {name: torch.randn((1, 1, side, side), generator=stream, device=device) for name, side in resolutions.items()}
        for stream in streams
    ]
    return {name: torch.cat([maps[name] for maps in per_crop]).requires_grad_(True) for name in resolutions}
