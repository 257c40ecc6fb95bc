"""Key conversion from the seed's `Gs.pth` to NVIDIA's StyleGAN2 layout.

The authors' repository runs StyleGAN2 through its copy of adriansahlman's stylegan2_pytorch
(`styleGAN2_model/stylegan2_pytorch`): `run_convert_from_tf.py` turns NVIDIA's TF pickle into `Gs.pth`,
and `stylegan2.models.load` rebuilds the network from it. The file is a `torch.save` of nested dicts,
one per model, each {'name': class name, 'kwargs': constructor keywords that differ from the class
defaults, 'state_dict': tensors}:

    {'name': 'Generator', 'kwargs': {...}, 'state_dict': {'dlatent_avg'[, 'layer_psi']},
     'G_mapping':   {'name': 'GeneratorMapping', 'kwargs': {...},
                     'state_dict': {'main.{i}.layer.weight', 'main.{i}.bias'}},
     'G_synthesis': {'name': 'GeneratorSynthesis', 'kwargs': {'channels': [last .. first], ...},
                     'state_dict': {'const', 'conv_blocks.{b}.conv_block.{j}.*', 'to_data_layers.{b}.*',
                                    'upsample.weight', 'upsample.filter.filter_kernel'}}}

Block b is the 4 * 2**b resolution; its conv_block.0 is NVIDIA's conv0 (conv1 in block 0), conv_block.1
its conv1. Weights are stored as the TF ones converted the way NVIDIA's legacy.py converts them (the
upsampling convolutions flipped, modulation biases +1), with the same run-time scales, so under
NVIDIA's names they compute NVIDIA's (and TF's) network. stylegan2_pytorch's own forward pass differs
in one place: its skip-path `Upsample` pads the zero-inserted image by 3 and 1 pixels where TF pads by
2 and 1 (after a trailing zero), which moves every lower resolution's RGB one pixel down and right
per doubling; chinfix computes the network as NVIDIA trained it. The noise maps are not in the file
(stylegan2_pytorch draws fresh noise on every call): `NOISE_SEED` fills them.
"""

from __future__ import annotations

import re

import torch

NOISE_SEED = 0
"""Seed of the noise maps a Gs.pth lacks: `noise_mode="const"` is then the same on every load."""

SEED_MAPPING_LR_MULTIPLIER = 0.01  # GeneratorMapping's default lr_mul

_MAPPING_KEY = re.compile(r"main\.(\d+)\.(layer\.weight|bias)")
_CONV_KEY = re.compile(r"conv_blocks\.(\d+)\.conv_block\.(\d+)\.(.+)")
_TO_RGB_KEY = re.compile(r"to_data_layers\.(\d+)\.(.+)")

# Suffixes inside one conv_block layer (BiasActivationWrapper > NoiseInjectionWrapper > ConvLayer).
_CONV_SUFFIXES = {
    "bias": "bias",
    "layer.weight": "noise_strength",
    "layer.layer.weight": "weight",
    "layer.layer.dense.layer.weight": "affine.weight",
    "layer.layer.dense.bias": "affine.bias",
}
# Suffixes inside one to_data layer (BiasActivationWrapper > ConvLayer).
_TO_RGB_SUFFIXES = {
    "bias": "bias",
    "layer.weight": "weight",
    "layer.dense.layer.weight": "affine.weight",
    "layer.dense.bias": "affine.bias",
}
# FIR kernels stylegan2_pytorch keeps as buffers; NVIDIA keeps its own `resample_filter` buffers.
_IGNORED_SYNTHESIS_KEYS = re.compile(r"upsample\.weight|.*filter\.filter_kernel")

# Keywords whose stylegan2_pytorch meaning NVIDIA's StyleGAN2 does not have, with the only value that
# NVIDIA's network computes. Absent keywords take the class default, which is this value.
_SYNTHESIS_REQUIREMENTS = {
    "skip": True,
    "resnet": False,
    "demodulate": True,
    "modulate_data_out": True,
    "noise": True,
    "fused_resample": True,
    "conv_resample_mode": "FIR",
    "skip_resample_mode": "FIR",
    "pad_once": True,
    "conv_pad_mode": "constant",
    "filter_pad_mode": "constant",
    "conv_block_size": 2,
    "weight_scale": True,
    "lr_mul": 1,
}
_MAPPING_REQUIREMENTS = {"normalize_input": True, "weight_scale": True, "label_size": 0}
_LEAKY_RELU_02 = {"leaky:0.2", "lrelu:0.2"}  # the class default; bare 'lrelu' would mean slope 0.01


class SeedGeneratorError(ValueError):
    """A Gs.pth whose network NVIDIA's StyleGAN2 generator does not compute."""


def is_seed_generator_file(contents: dict) -> bool:
    return (
        contents.get("name") == "Generator"
        and isinstance(contents.get("G_mapping"), dict)
        and isinstance(contents.get("G_synthesis"), dict)
    )


def seed_mapping_lr_multiplier(contents: dict) -> float:
    return float(_kwargs(contents["G_mapping"]).get("lr_mul", SEED_MAPPING_LR_MULTIPLIER))


def seed_resample_taps(contents: dict) -> tuple[float, ...]:
    """The 1-D FIR taps of the skip upsampling (its buffer is the normalised 2-D filter times 4)."""
    kernel = _state_dict(contents["G_synthesis"]).get("upsample.filter.filter_kernel")
    if kernel is None:
        raise SeedGeneratorError("Gs.pth has no skip upsampling filter (upsample.filter.filter_kernel)")
    taps = kernel.reshape(kernel.shape[-2:]).to(torch.float64).sum(dim=0)
    return tuple(float(tap) for tap in taps / taps.sum())


def seed_generator_to_nvidia(contents: dict) -> dict[str, torch.Tensor]:
    """The Gs.pth tensors under NVIDIA's names and shapes, with `mapping.w_avg` and seeded noise maps.

    Raises SeedGeneratorError for networks NVIDIA's StyleGAN2 does not compute (conditional, resnet,
    no noise, other activations, ...) and for keys that are not part of stylegan2_pytorch's generator."""
    _check_options(contents)
    mapping = _state_dict(contents["G_mapping"])
    synthesis = _state_dict(contents["G_synthesis"])
    generator = _state_dict(contents)
    if "dlatent_avg" not in generator:
        raise SeedGeneratorError("Gs.pth has no dlatent_avg")
    converted = {"mapping.w_avg": generator["dlatent_avg"]}
    for key, tensor in mapping.items():
        converted[_nvidia_mapping_key(key)] = tensor
    for key, tensor in synthesis.items():
        nvidia_key = _nvidia_synthesis_key(key)
        if nvidia_key is not None:
            converted[nvidia_key] = tensor.reshape([]) if nvidia_key.endswith("noise_strength") else tensor
    return {**converted, **_seeded_noise_maps(converted)}


def _kwargs(model: dict) -> dict:
    return dict(model.get("kwargs") or {})


def _state_dict(model: dict) -> dict[str, torch.Tensor]:
    state_dict = model.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise SeedGeneratorError(f"Gs.pth: the {model.get('name')} state_dict is not a dict of tensors")
    return state_dict


def _check_options(contents: dict) -> None:
    for model, requirements in (
        (contents["G_synthesis"], _SYNTHESIS_REQUIREMENTS),
        (contents["G_mapping"], _MAPPING_REQUIREMENTS),
    ):
        kwargs = _kwargs(model)
        for name, required in requirements.items():
            if kwargs.get(name, required) != required:
                raise SeedGeneratorError(f"Gs.pth: {model.get('name')} {name}={kwargs[name]!r} is not supported (only {required!r})")
        activation = str(kwargs.get("activation", "lrelu:0.2")).replace(" ", "").lower()
        if activation not in _LEAKY_RELU_02:
            raise SeedGeneratorError(f"Gs.pth: {model.get('name')} activation {kwargs['activation']!r} is not supported (only leaky ReLU 0.2)")
    synthesis_kwargs = _kwargs(contents["G_synthesis"])
    if synthesis_kwargs.get("conv_filter", [1, 3, 3, 1]) != synthesis_kwargs.get("skip_filter", [1, 3, 3, 1]):
        raise SeedGeneratorError("Gs.pth: different conv and skip filters are not supported")


def _nvidia_mapping_key(key: str) -> str:
    match = _MAPPING_KEY.fullmatch(key)
    if match is None:
        # `embedding.weight` is a label embedding: a conditional generator.
        raise SeedGeneratorError(f"Gs.pth: unsupported mapping tensor {key!r} (conditional generators are not supported)")
    name = "weight" if match.group(2) == "layer.weight" else "bias"
    return f"mapping.fc{match.group(1)}.{name}"


def _nvidia_synthesis_key(key: str) -> str | None:
    if key == "const":
        return "synthesis.b4.const"
    if _IGNORED_SYNTHESIS_KEYS.fullmatch(key):
        return None
    if (match := _CONV_KEY.fullmatch(key)) and match.group(3) in _CONV_SUFFIXES:
        block, layer = int(match.group(1)), int(match.group(2))
        name = "conv1" if block == 0 or layer == 1 else "conv0"
        return f"synthesis.b{4 * 2**block}.{name}.{_CONV_SUFFIXES[match.group(3)]}"
    if (match := _TO_RGB_KEY.fullmatch(key)) and match.group(2) in _TO_RGB_SUFFIXES:
        return f"synthesis.b{4 * 2 ** int(match.group(1))}.torgb.{_TO_RGB_SUFFIXES[match.group(2)]}"
    raise SeedGeneratorError(f"Gs.pth: unsupported synthesis tensor {key!r} (only the 'skip' config-f generator is)")


def _seeded_noise_maps(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One RxR standard-normal map per layer with a noise strength, drawn in layer order from NOISE_SEED."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    layers = sorted(
        (key.removesuffix(".noise_strength") for key in state_dict if key.endswith(".noise_strength")),
        key=lambda layer: (int(layer.split(".")[1].removeprefix("b")), layer),
    )
    maps = {}
    for layer in layers:
        resolution = int(layer.split(".")[1].removeprefix("b"))
        maps[f"{layer}.noise_const"] = torch.randn([resolution, resolution], generator=generator)
    return maps
