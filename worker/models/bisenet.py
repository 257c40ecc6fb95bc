"""BiSeNet face parsing (19 CelebAMask-HQ classes) with its own ResNet-18 context path.

The module and parameter names follow the public face-parsing checkpoint
(zllrunning/face-parsing.PyTorch, `79999_iter.pth`) so that its state dict loads as is:
`cp.resnet.*` (ResNet-18 trunk), `cp.arm16/arm32/conv_head16/conv_head32/conv_avg`,
`ffm.*`, `conv_out.*`, `conv_out16.*`, `conv_out32.*`. That network has no separate
spatial path: the ResNet's 1/8 features take its place.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError

NUM_CLASSES = 19
INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FaceClass(IntEnum):
    """CelebAMask-HQ labels in the order the public checkpoint predicts them."""

    BACKGROUND = 0
    SKIN = 1
    LEFT_BROW = 2
    RIGHT_BROW = 3
    LEFT_EYE = 4
    RIGHT_EYE = 5
    EYEGLASSES = 6
    LEFT_EAR = 7
    RIGHT_EAR = 8
    EARRING = 9
    NOSE = 10
    MOUTH = 11
    UPPER_LIP = 12
    LOWER_LIP = 13
    NECK = 14
    NECKLACE = 15
    CLOTH = 16
    HAIR = 17
    HAT = 18


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and a (projected when needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def residual_stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(in_channels, out_channels, stride),
        ResidualBlock(out_channels, out_channels, 1),
    )


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier; returns the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = residual_stage(64, 64, 1)
        self.layer2 = residual_stage(64, 128, 2)
        self.layer3 = residual_stage(128, 256, 2)
        self.layer4 = residual_stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinement(nn.Module):
    """Reweights a feature map's channels by a gate computed from its global average."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * gate


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the 1/8 trunk features, the 1/8 context features and the 1/16 context features."""
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        feat32_sum = self.arm32(feat32) + global_context  # broadcasts over H and W
        context16 = self.conv_head32(F.interpolate(feat32_sum, size=feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + context16
        context8 = self.conv_head16(F.interpolate(feat16_sum, size=feat8.shape[2:], mode="nearest"))
        return feat8, context8, context16


class FeatureFusion(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat + feat * gate


class ParsingHead(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parser. Input: Nx3xHxW ImageNet-normalised RGB (H, W multiples of 32; 512 in training).

    Output: Nx19xHxW class logits. The two auxiliary heads of training (`conv_out16`,
    `conv_out32`) are kept so the checkpoint loads strictly, but inference only needs the main one.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = ParsingHead(256, 256, num_classes)
        self.conv_out16 = ParsingHead(128, 64, num_classes)
        self.conv_out32 = ParsingHead(128, 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


def load_bisenet(path: Path, device: torch.device | str = "cpu") -> BiSeNet:
    """Loads the public face-parsing checkpoint (a plain state dict) into an eval-mode BiSeNet.

    Raises PipelineError(MODEL_MISSING) when the file is absent. Older PyTorch versions did not
    save BatchNorm's `num_batches_tracked`, so those keys alone may be missing; any other
    mismatch is an error.
    """
    if not path.is_file():
        raise PipelineError(
            ErrorCode.MODEL_MISSING,
            f"face parsing weights not found at {path}; run `chinfix models pull face_parsing_bisenet`",
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = BiSeNet()
    result = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} is not a face-parsing BiSeNet checkpoint: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval().requires_grad_(False).to(device)
