"""Key conversion from rosinality's stylegan2-pytorch `Generator` (the `g_ema` state dict that e4e, pSp
and many editing projects distribute) to NVIDIA's StyleGAN2 layout.

rosinality's layers compute what NVIDIA's do (equalised-lr linear layers with the same lr multiplier,
modulated convolutions whose constant weight scale the demodulation cancels, the same transposed-conv +
[1,3,3,1] FIR upsampling, noise added before the fused bias + lrelu), so only names and a few shapes
differ. The moving average `w_avg` is not part of a rosinality state dict: checkpoints that carry a
`latent_avg` provide it, otherwise the loader estimates it (see `checkpoints.py`).
"""

from __future__ import annotations

import re

import torch

ROSINALITY_MAPPING_KEY = re.compile(r"style\.(\d+)\.(weight|bias)")
ROSINALITY_CONV_KEY = re.compile(r"convs\.(\d+)\.(.+)")
ROSINALITY_TORGB_KEY = re.compile(r"to_rgbs\.(\d+)\.(.+)")
ROSINALITY_NOISE_KEY = re.compile(r"noises\.noise_(\d+)")

# Suffixes inside one StyledConv / ToRGB, rosinality name -> NVIDIA name.
_LAYER_SUFFIXES = {
    "conv.weight": "weight",
    "conv.modulation.weight": "affine.weight",
    "conv.modulation.bias": "affine.bias",
    "noise.weight": "noise_strength",
    "activate.bias": "bias",
    "bias": "bias",
}
# FIR kernels rosinality keeps as buffers; NVIDIA keeps its own `resample_filter` buffers.
_IGNORED_SUFFIXES = ("conv.blur.kernel", "upsample.kernel")


def is_rosinality_state_dict(state_dict: dict) -> bool:
    return "input.input" in state_dict and "conv1.conv.weight" in state_dict


def _block_resolution(block_index: int) -> int:
    return 4 * 2**block_index


def _nvidia_layer_key(prefix: str, suffix: str) -> str | None:
    if suffix in _IGNORED_SUFFIXES:
        return None
    if suffix not in _LAYER_SUFFIXES:
        raise ValueError(f"unknown rosinality key {prefix}{suffix}")
    return f"{prefix}{_LAYER_SUFFIXES[suffix]}"


def _nvidia_key(key: str) -> str | None:
    """NVIDIA name for one rosinality key (None for buffers NVIDIA does not store under that name)."""
    if match := ROSINALITY_MAPPING_KEY.fullmatch(key):
        # style.0 is rosinality's PixelNorm, so style.{i+1} is NVIDIA's fc{i}.
        return f"mapping.fc{int(match.group(1)) - 1}.{match.group(2)}"
    if key == "input.input":
        return "synthesis.b4.const"
    if key.startswith("conv1."):
        return _nvidia_layer_key("synthesis.b4.conv1.", key.removeprefix("conv1."))
    if key.startswith("to_rgb1."):
        return _nvidia_layer_key("synthesis.b4.torgb.", key.removeprefix("to_rgb1."))
    if match := ROSINALITY_CONV_KEY.fullmatch(key):
        conv_index = int(match.group(1))
        layer = "conv0" if conv_index % 2 == 0 else "conv1"
        return _nvidia_layer_key(f"synthesis.b{_block_resolution(conv_index // 2 + 1)}.{layer}.", match.group(2))
    if match := ROSINALITY_TORGB_KEY.fullmatch(key):
        return _nvidia_layer_key(f"synthesis.b{_block_resolution(int(match.group(1)) + 1)}.torgb.", match.group(2))
    if match := ROSINALITY_NOISE_KEY.fullmatch(key):
        # noise_0 is the 4x4 layer; then two per block (conv0, conv1).
        noise_index = int(match.group(1))
        if noise_index == 0:
            return "synthesis.b4.conv1.noise_const"
        layer = "conv0" if noise_index % 2 == 1 else "conv1"
        return f"synthesis.b{_block_resolution((noise_index + 1) // 2)}.{layer}.noise_const"
    raise ValueError(f"unknown rosinality key {key!r}")


def _nvidia_shape(nvidia_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """rosinality keeps leading singleton dims NVIDIA does not: const 1xCx4x4, (toRGB) conv weights
    1xOxIxKxK, noise 1x1xRxR, noise strength [1], toRGB bias 1x3x1x1."""
    if nvidia_key.endswith(".noise_strength"):
        return tensor.reshape([])
    if nvidia_key.endswith(".noise_const"):
        return tensor.reshape(tensor.shape[-2:])
    if nvidia_key.endswith("torgb.bias"):
        return tensor.reshape(-1)
    if nvidia_key.endswith(".const") or tensor.ndim == 5:
        return tensor[0]
    return tensor


def rosinality_to_nvidia(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and reshape a rosinality `g_ema` state dict into NVIDIA's layout (without `mapping.w_avg`).

    Raises ValueError on a key that is not part of rosinality's StyleGAN2 generator."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        nvidia_key = _nvidia_key(key)
        if nvidia_key is not None:
            converted[nvidia_key] = _nvidia_shape(nvidia_key, tensor)
    return converted
