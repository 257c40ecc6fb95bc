"""The seed's perceptual model (`styleGAN2_model/perceptual_model.py`): its checkpoint layout, input handling
and feature layer, on random weights in its key layout."""

from __future__ import annotations

import pytest
import torch

from tests.lpips_fixtures import torchvision_style_vgg16_checkpoint
from tests.perceptual_fixtures import save_random_seed_vgg16, seed_style_vgg16_checkpoint
from worker.models.vgg16 import CAFFE_BGR_MEAN, load_seed_perceptual_vgg16


def test_seed_checkpoint_loads_and_gives_relu4_3(tmp_path) -> None:
    model = load_seed_perceptual_vgg16(save_random_seed_vgg16(tmp_path / "vgg16.pth"))
    features = model(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert features.shape == (2, 512, 8, 8) and bool((features >= 0).all())
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_input_is_shifted_to_0_255_bgr_minus_the_caffe_mean(tmp_path) -> None:
    """Rebuild the seed's forward by hand: (x - min) * 255 / (max - min), channels [2, 1, 0], minus the mean,
    then its Sequential layers 0..22 (convolutions at its indices, ReLUs, max-pools)."""
    state = seed_style_vgg16_checkpoint(3)
    model = load_seed_perceptual_vgg16(save_random_seed_vgg16(tmp_path / "vgg16.pth", seed=3))
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    x = (images + 1.0) * 255.0 / 2.0
    x = x[:, [2, 1, 0]] - torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1)
    for index in range(23):
        if f"layer{index}.weight" in state:
            x = torch.nn.functional.conv2d(x, state[f"layer{index}.weight"], state[f"layer{index}.bias"], padding=1)
        elif index in (4, 9, 16):
            x = torch.nn.functional.max_pool2d(x, 2)
        else:
            x = torch.relu(x)
    assert torch.allclose(model(images), x, rtol=1e-4, atol=1e-3)


def test_torchvision_keys_are_refused(tmp_path) -> None:
    path = tmp_path / "torchvision.pth"
    torch.save(torchvision_style_vgg16_checkpoint(0), path)
    with pytest.raises(ValueError, match="layerN"):
        load_seed_perceptual_vgg16(path)
