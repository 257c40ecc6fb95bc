"""Random-weight VGG16 / LPIPS checkpoints in the published key layouts (no weights are downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

from worker.models.vgg16 import STAGE_CHANNELS

TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def torchvision_style_vgg16_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """torchvision vgg16's `features.*` keys and shapes, plus classifier keys (small stand-ins) the loader must skip."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    in_channels = 3
    for index, channels in zip(TORCHVISION_CONV_INDICES, VGG16_CONV_CHANNELS, strict=True):
        state[f"features.{index}.weight"] = torch.randn((channels, in_channels, 3, 3), generator=generator) * 0.05
        state[f"features.{index}.bias"] = torch.randn((channels,), generator=generator) * 0.01
        in_channels = channels
    for index in (0, 3, 6):
        state[f"classifier.{index}.weight"] = torch.zeros((4, 4))
        state[f"classifier.{index}.bias"] = torch.zeros((4,))
    return state


def published_lin_state(seed: int) -> dict[str, torch.Tensor]:
    """LPIPS v0.1 'vgg' linear layers as richzhang/PerceptualSimilarity publishes them (random, non-negative)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        f"lin{stage}.model.1.weight": torch.rand((1, channels, 1, 1), generator=generator)
        for stage, channels in enumerate(STAGE_CHANNELS)
    }


def save_random_lpips_checkpoints(vgg_path: Path, lin_path: Path, seed: int = 0) -> None:
    vgg_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision_style_vgg16_checkpoint(seed), vgg_path)
    torch.save(published_lin_state(seed), lin_path)
