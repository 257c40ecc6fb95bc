"""LPIPS / VGG16: architecture, published key layouts, and the metric's basic properties.

Randomly initialised networks of the published architecture; no weights are downloaded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.generator_fixtures import build_tiny_generator
from tests.lpips_fixtures import TORCHVISION_CONV_INDICES, published_lin_state, torchvision_style_vgg16_checkpoint
from worker.models.lpips import (
    LPIPS_SCALE,
    LPIPS_SHIFT,
    build_random_lpips,
    load_lpips_vgg,
    published_channel_weights,
)
from worker.models.vgg16 import STAGE_CHANNELS, VGG16Features, load_vgg16_features

@pytest.fixture(scope="module")
def metric():
    return build_random_lpips(seed=0)


def _images(seed: int, count: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, 3, size, size), generator=generator) * 2 - 1


def test_vgg16_state_dict_matches_torchvision_layout():
    own = {key: tuple(value.shape) for key, value in VGG16Features().state_dict().items()}
    expected = {
        key: tuple(value.shape) for key, value in torchvision_style_vgg16_checkpoint(0).items() if key.startswith("features.")
    }
    assert own == expected


def test_vgg16_returns_five_relu_stages(metric):
    stages = metric.vgg(_images(1, count=1, size=32))
    assert [stage.shape[1] for stage in stages] == list(STAGE_CHANNELS)
    assert [stage.shape[-1] for stage in stages] == [32, 16, 8, 4, 2]
    assert all(bool((stage >= 0).all()) for stage in stages)


def test_identical_images_give_zero_and_different_images_do_not(metric):
    images = _images(2)
    assert torch.equal(metric(images, images), torch.zeros(2))
    other = _images(3)
    distances = metric(images, other)
    assert distances.shape == (2,)
    assert bool((distances > 0).all())
    torch.testing.assert_close(distances, metric(other, images))


def test_batch_distances_equal_single_distances(metric):
    images, other = _images(4, count=3), _images(5, count=3)
    batched = metric(images, other)
    singles = torch.cat([metric(images[i : i + 1], other[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-7)


def test_loss_is_differentiable_with_respect_to_the_input(metric):
    target = _images(6, count=1)
    candidate = _images(7, count=1).requires_grad_(True)
    metric(candidate, target).sum().backward()
    assert candidate.grad is not None
    assert bool(torch.isfinite(candidate.grad).all()) and float(candidate.grad.abs().sum()) > 0


def test_published_checkpoints_load_and_define_the_metric(tmp_path):
    vgg_path, lin_path = tmp_path / "vgg16.pth", tmp_path / "vgg.pth"
    checkpoint, lin_state = torchvision_style_vgg16_checkpoint(11), published_lin_state(12)
    torch.save(checkpoint, vgg_path)
    torch.save(lin_state, lin_path)
    metric = load_lpips_vgg(vgg_path, lin_path)
    assert not any(parameter.requires_grad for parameter in metric.parameters())
    torch.testing.assert_close(metric.vgg.features[28].bias, checkpoint["features.28.bias"])

    images, other = _images(13), _images(14)
    # Independent formulation, straight from the published tensors: scaling layer, torchvision-style
    # trunk via F.conv2d, channel normalisation, the 1x1 lin conv, spatial mean, sum over stages.
    def stages(batch):
        hidden = (batch - torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)) / torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
        outputs = []
        for index in TORCHVISION_CONV_INDICES:
            if index in (5, 10, 17, 24):
                hidden = F.max_pool2d(hidden, 2)
            hidden = F.relu(F.conv2d(hidden, checkpoint[f"features.{index}.weight"], checkpoint[f"features.{index}.bias"], padding=1))
            if index in (2, 7, 14, 21, 28):
                outputs.append(hidden / (hidden.norm(dim=1, keepdim=True) + 1e-10))
        return outputs

    expected = sum(
        F.conv2d((a - b) ** 2, lin_state[f"lin{stage}.model.1.weight"]).mean(dim=(1, 2, 3))
        for stage, (a, b) in enumerate(zip(stages(images), stages(other), strict=True))
    )
    torch.testing.assert_close(metric(images, other), expected, rtol=1e-4, atol=1e-6)


def test_vgg_loader_ignores_classifier_but_requires_every_conv(tmp_path):
    checkpoint = torchvision_style_vgg16_checkpoint(21)
    path = tmp_path / "vgg16.pth"
    torch.save(checkpoint, path)
    assert load_vgg16_features(path).features[0].weight.shape == (64, 3, 3, 3)
    del checkpoint["features.14.weight"]
    torch.save(checkpoint, path)
    with pytest.raises(RuntimeError, match="features.14.weight"):
        load_vgg16_features(path)


def test_lin_weights_must_be_complete_non_negative_and_shaped():
    lin_state = published_lin_state(31)
    assert [weight.shape for weight in published_channel_weights(lin_state)] == [(c,) for c in STAGE_CHANNELS]
    negative = dict(lin_state, **{"lin2.model.1.weight": -lin_state["lin2.model.1.weight"]})
    with pytest.raises(ValueError, match="non-negative"):
        published_channel_weights(negative)
    missing = {key: value for key, value in lin_state.items() if not key.startswith("lin4")}
    with pytest.raises(ValueError, match="lin4"):
        published_channel_weights(missing)
    wrong = dict(lin_state, **{"lin0.model.1.weight": torch.rand(1, 32, 1, 1)})
    with pytest.raises(ValueError, match="shape"):
        published_channel_weights(wrong)


def test_loss_is_differentiable_with_respect_to_the_code(metric):
    G = build_tiny_generator(resolution=32, seed=0)
    with torch.no_grad():
        target = G.synthesis(G.mapping(torch.randn((1, G.z_dim), generator=torch.Generator().manual_seed(1))))
    code = G.w_avg.expand(1, G.num_ws, G.w_dim).clone().requires_grad_(True)
    distance = metric(G.synthesis(code, noise_mode="const"), target)
    (gradient,) = torch.autograd.grad(distance.sum(), code)
    assert float(distance.detach()) > 0
    assert bool(torch.isfinite(gradient).all())
    assert bool((gradient.abs().sum(dim=-1) > 0).all()), "every style layer should receive gradient"
