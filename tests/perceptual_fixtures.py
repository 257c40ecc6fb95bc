"""Random-weight checkpoints of the seed's perceptual VGG16 (`vgg16.pth`, keys `layerN.weight/bias`)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.lpips_fixtures import torchvision_style_vgg16_checkpoint
from worker.models.vgg16 import SeedPerceptualVGG16, load_seed_perceptual_vgg16


def seed_style_vgg16_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """The seed's key layout (its Sequential's `layerN`), He-scaled random convolutions."""
    state = {}
    for key, value in torchvision_style_vgg16_checkpoint(seed).items():
        if key.startswith("features."):
            _, index, name = key.split(".")
            fan_in = value[0].numel() if value.dim() > 1 else 1
            state[f"layer{index}.{name}"] = value / 0.05 * (2.0 / fan_in) ** 0.5 if value.dim() > 1 else value
    return state


def save_random_seed_vgg16(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(seed_style_vgg16_checkpoint(seed), path)
    return path


def build_random_seed_perceptual(seed: int, directory: Path) -> SeedPerceptualVGG16:
    return load_seed_perceptual_vgg16(save_random_seed_vgg16(directory / "vgg16.pth", seed))
