"""VGG16 convolutional trunk (no classifier), laid out like torchvision's `vgg16().features`.

Module indices follow torchvision's Sequential, so its ImageNet checkpoint's `features.N.weight`
/ `features.N.bias` keys load unchanged; the classifier keys in that file are ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MAX_POOL = "M"
VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, MAX_POOL,
    128, 128, MAX_POOL,
    256, 256, 256, MAX_POOL,
    512, 512, 512, MAX_POOL,
    512, 512, 512, MAX_POOL,
)  # fmt: skip

RELU_STAGE_ENDS: tuple[int, ...] = (3, 8, 15, 22, 29)
"""Indices in `features` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the outputs LPIPS compares."""

STAGE_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)


def _vgg16_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_PLAN:
        if item == MAX_POOL:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            in_channels = int(item)
    return layers


class VGG16Features(nn.Module):
    """VGG16 conv trunk returning the five relu stage outputs (see `RELU_STAGE_ENDS`).

    Input: Nx3xHxW float, already normalised the way the weights expect (ImageNet statistics
    for torchvision's weights). Output: five tensors N x STAGE_CHANNELS[i] x H/2^i x W/2^i.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*_vgg16_layers())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        stages = []
        hidden = images
        for index, layer in enumerate(self.features[: RELU_STAGE_ENDS[-1] + 1]):
            hidden = layer(hidden)
            if index in RELU_STAGE_ENDS:
                stages.append(hidden)
        return stages


def vgg16_features_state(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `features.*` entries of a torchvision vgg16 state dict (drops the classifier)."""
    return {key: value for key, value in checkpoint.items() if key.startswith("features.")}


def load_vgg16_features(path: Path, device: torch.device | str = "cpu") -> VGG16Features:
    """Load torchvision's ImageNet vgg16 state dict (a plain tensor dict, no pickled code) as a frozen trunk."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    network = VGG16Features()
    network.load_state_dict(vgg16_features_state(checkpoint), strict=True)
    return network.eval().requires_grad_(False).to(device)


SEED_FEATURE_INDEX = 22
"""relu4_3 (Keras' block4_conv3 after its ReLU): the seed's perceptual feature (its `output_layer_idx=23`)."""

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""The per-channel mean (B, G, R, of 0..255 pixels) the Caffe/Keras VGG16 weights were trained with."""


class SeedPerceptualVGG16(nn.Module):
    """The seed's perceptual model (`styleGAN2_model/perceptual_model.py`): VGG16 up to relu4_3 with the
    Keras/Caffe weights, fed as those weights expect: [-1, 1] RGB → 0..255, BGR, minus `CAFFE_BGR_MEAN`.

    Input: Nx3xHxW float RGB in [-1, 1]. Output: N x 512 x H/8 x W/8 float32 relu4_3 features.
    """

    def __init__(self, vgg: VGG16Features | None = None) -> None:
        super().__init__()
        self.vgg = vgg if vgg is not None else VGG16Features()
        self.register_buffer("bgr_mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bgr = (images.float() + 1.0) * 127.5
        bgr = bgr.flip(1) - self.bgr_mean
        return self.vgg.features[: SEED_FEATURE_INDEX + 1](bgr)


def seed_vgg16_features_state(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seed's `vgg16.pth` (keys `layerN.weight`/`layerN.bias`, N the index in its Sequential, which is
    torchvision's `features` index) as `features.N.*` keys."""
    state = {}
    for key, value in checkpoint.items():
        prefix, _, rest = key.partition(".")
        if not prefix.startswith("layer") or not prefix[5:].isdigit():
            raise ValueError(f"the seed's vgg16.pth has keys layerN.weight/bias, not {key!r}")
        state[f"features.{prefix[5:]}.{rest}"] = value
    return state


def load_seed_perceptual_vgg16(path: Path, device: torch.device | str = "cpu") -> SeedPerceptualVGG16:
    """Load the seed's `vgg16.pth` (a plain tensor dict, no pickled code) as a frozen perceptual model."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    vgg = VGG16Features()
    vgg.load_state_dict(seed_vgg16_features_state(checkpoint), strict=True)
    return SeedPerceptualVGG16(vgg).eval().requires_grad_(False).to(device)
