"""LPIPS v0.1 with VGG16 features (Zhang et al. 2018), the perceptual metric of the inversion.

distance(x, y) = sum over the five relu stages of the spatial mean of
sum_c w_c * (x_hat - y_hat)^2, where x_hat are the stage features normalised to unit length
along channels and w_c >= 0 are the learned per-channel weights (LPIPS's 1x1 "lin" layers).

Weights: the VGG16 trunk from torchvision's ImageNet state dict (`vgg16_imagenet`) and the
linear layers from richzhang/PerceptualSimilarity's `weights/v0.1/vgg.pth` (`lpips_vgg_lin`,
keys `lin0.model.1.weight` .. `lin4.model.1.weight`, each 1 x C x 1 x 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from worker.models.vgg16 import STAGE_CHANNELS, VGG16Features, load_vgg16_features

# LPIPS's input scaling: maps [-1, 1] images onto ImageNet mean/std statistics.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

_NORM_EPS = 1e-10


class LPIPS(nn.Module):
    """LPIPS 'vgg' v0.1. Images: Nx3xHxW float RGB in [-1, 1]; distances: N float32.

    `features` and `distance` are split so a fixed target's features are computed once
    (the inversion compares many candidates against one target).
    """

    def __init__(self, vgg: VGG16Features | None = None) -> None:
        super().__init__()
        self.vgg = vgg if vgg is not None else VGG16Features()
        self.channel_weights = nn.ParameterList(
            nn.Parameter(torch.rand(channels)) for channels in STAGE_CHANNELS
        )
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised float32 features of the five relu stages of `images` (Nx3xHxW, [-1, 1]).

        The trunk runs in its parameters' dtype (`metric.vgg.half()` gives an fp16 trunk on CUDA).
        """
        trunk_dtype = self.vgg.features[0].weight.dtype
        stages = self.vgg(((images - self.shift) / self.scale).to(trunk_dtype))
        # fp32 here: the squared channel sums of relu features overflow fp16 under autocast.
        return [_unit_along_channels(stage.float()) for stage in stages]

    def distance(self, features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor:
        """Per-sample LPIPS distance (N float32) between two `features` results."""
        total = 0.0
        for weights, stage_a, stage_b in zip(self.channel_weights, features_a, features_b, strict=True):
            weighted = (stage_a - stage_b).square() * weights.view(1, -1, 1, 1)
            total = total + weighted.sum(dim=1).mean(dim=(1, 2))
        return total

    def distance_map(
        self, features_a: list[torch.Tensor], features_b: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """Nx1xHxW float32 (H, W = `size`): LPIPS per location, each stage's map upsampled bilinearly to `size`
        and summed (the published `spatial=True` variant), so a distance can be averaged under a mask."""
        total = 0.0
        for weights, stage_a, stage_b in zip(self.channel_weights, features_a, features_b, strict=True):
            weighted = ((stage_a - stage_b).square() * weights.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
            total = total + torch.nn.functional.interpolate(weighted, size=size, mode="bilinear", align_corners=False)
        return total

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(images_a), self.features(images_b))


def _unit_along_channels(stage: torch.Tensor) -> torch.Tensor:
    return stage / (stage.square().sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)


def published_channel_weights(lin_state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The five per-channel weight vectors from PerceptualSimilarity's vgg.pth (`linK.model.1.weight`)."""
    weights = []
    for stage, channels in enumerate(STAGE_CHANNELS):
        key = f"lin{stage}.model.1.weight"
        if key not in lin_state:
            raise ValueError(f"LPIPS linear-layer file lacks {key}")
        weight = lin_state[key]
        if tuple(weight.shape) != (1, channels, 1, 1):
            raise ValueError(f"{key} has shape {tuple(weight.shape)}, expected (1, {channels}, 1, 1)")
        if bool((weight < 0).any()):
            raise ValueError(f"{key} has negative weights; LPIPS v0.1 linear layers are non-negative")
        weights.append(weight.reshape(channels).float())
    return weights


def load_lpips_vgg(vgg_path: Path, lin_path: Path, device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS from the two published state dicts, frozen, in eval mode, on `device`."""
    lin_state = torch.load(lin_path, map_location="cpu", weights_only=True)
    metric = LPIPS(load_vgg16_features(vgg_path))
    with torch.no_grad():
        for parameter, weight in zip(metric.channel_weights, published_channel_weights(lin_state), strict=True):
            parameter.copy_(weight)
    return metric.eval().requires_grad_(False).to(device)


def build_random_lpips(seed: int, device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS with the published architecture and random weights (He-initialised convs), for tests and benchmarks."""
    generator = torch.Generator().manual_seed(seed)
    metric = LPIPS()
    with torch.no_grad():
        for layer in metric.vgg.features:
            if isinstance(layer, nn.Conv2d):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                layer.bias.zero_()
        for parameter in metric.channel_weights:
            parameter.copy_(torch.rand(parameter.shape, generator=generator))
    return metric.eval().requires_grad_(False).to(device)
