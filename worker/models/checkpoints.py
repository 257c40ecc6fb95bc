"""Load a StyleGAN2 generator from any supported checkpoint, without executing code from the file.

Formats (recognised by content, not by file name):
- NVIDIA network pickles (stylegan2-ada-pytorch `training.networks`, stylegan3 `--cfg=stylegan2`
  `training.networks_stylegan2` `*.pkl`): `G_ema`, read by the restricted unpickler in
  `nvidia_pickle.py`; conv_clamp and the mapping's lr multiplier come from the layers' own records.
- State dicts in NVIDIA's key layout, as `.pt` (torch.load weights_only=True) or `.safetensors`.
- rosinality `g_ema` state dicts, bare or in train.py's checkpoints (which also pickle their
  argparse.Namespace `args`: that one class is allow-listed) or e4e/pSp's (`decoder.` keys), converted on load.
- The seed's `Gs.pth` (stylegan2_pytorch's serialisation, `seed_gs.py`), converted on load.
- The canonical form `convert_generator_checkpoint` writes: a `.safetensors` in NVIDIA's key layout
  whose header metadata holds the architecture as JSON; read memory-mapped.

The architecture is read from tensor shapes, so a 32x32 test model and the 1024x1024 FFHQ model take
the same path. Hyperparameters that no shape reveals default to NVIDIA's config-f values.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import torch

from worker.models.nvidia_pickle import PersistentRecord, nvidia_pickle_generator
from worker.models.rosinality import is_rosinality_state_dict, rosinality_to_nvidia
from worker.models.seed_gs import (
    is_seed_generator_file,
    seed_generator_to_nvidia,
    seed_mapping_lr_multiplier,
    seed_resample_taps,
)
from worker.models.stylegan2 import (
    DEFAULT_RESAMPLE_FILTER,
    Generator,
    GeneratorArchitecture,
    MappingNetwork,
    fir_filter_2d,
)

CANONICAL_FORMAT_NAME = "chinfix-stylegan2"
TORCH_FILE_SAFE_GLOBALS = [argparse.Namespace]
"""Classes `torch.load(weights_only=True)` may rebuild besides tensors and plain containers: rosinality's
train.py saves its command-line `args` beside the weights. A Namespace only holds attributes, and
whatever they hold passes the same weights-only check."""
W_AVG_SAMPLES = 10_000

_MAPPING_LAYER_KEY = re.compile(r"mapping\.fc(\d+)\.weight")
_MAPPING_LAYER_NAME = re.compile(r"fc\d+")
_BLOCK_KEY = re.compile(r"synthesis\.b(\d+)\.")


class CheckpointFormat(StrEnum):
    NVIDIA_PICKLE = "nvidia-pickle"
    NVIDIA_STATE_DICT = "nvidia-state-dict"
    ROSINALITY = "rosinality"
    SEED_GS = "seed-gs"
    CANONICAL = "canonical"


class CheckpointError(ValueError):
    """The file is not a StyleGAN2 generator checkpoint this loader understands (or is unsafe)."""


@dataclass(frozen=True)
class GeneratorCheckpoint:
    """A checkpoint read into memory: NVIDIA-layout tensors plus the architecture they imply."""

    format: CheckpointFormat
    architecture: GeneratorArchitecture
    state_dict: dict[str, torch.Tensor]


def load_generator(
    path: str | Path,
    device: str | torch.device = "cpu",
    fp16_resolutions: int = 0,
    channels_last: bool = False,
) -> Generator:
    """Read any supported checkpoint into an eval-mode Generator on `device` with requires_grad off.

    fp32 unless `fp16_resolutions` > 0 (NVIDIA's usual is 4, for CUDA); see `Generator.set_precision`.
    """
    generator = build_generator(read_generator_checkpoint(path), device=device)
    return generator.set_precision(fp16_resolutions=fp16_resolutions, channels_last=channels_last)


def read_generator_checkpoint(path: str | Path) -> GeneratorCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint not found: {path}")
    with open(path, "rb") as stream:
        head = stream.read(16)
    try:
        if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80\x02\x8a"):
            return _read_torch_file(path)
        if head.startswith(b"\x80"):
            return _read_nvidia_pickle(path)
        if len(head) > 8 and head[8:9] == b"{":
            return _read_safetensors(path)
    except (pickle.UnpicklingError, ValueError, KeyError, RuntimeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {error}") from error
    raise CheckpointError(f"{path}: not a pickle, torch or safetensors file")


def build_generator(checkpoint: GeneratorCheckpoint, device: str | torch.device = "cpu") -> Generator:
    """Instantiate the architecture and load the tensors (strict: every tensor must fit a slot)."""
    with torch.device("meta"):
        generator = Generator(checkpoint.architecture)
    state_dict = _complete_state_dict(generator, checkpoint)
    try:
        generator.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint tensors do not fit the inferred architecture: {error}") from error
    return generator.to(device).eval().requires_grad_(False)


def save_canonical(generator: Generator, path: str | Path) -> Path:
    """Write the generator as the canonical safetensors file (atomically: temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"the canonical format is a .safetensors file, got {path.name}")
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in generator.state_dict().items()}
    metadata = {"format": CANONICAL_FORMAT_NAME, "architecture": json.dumps(generator.architecture.to_json_dict())}
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    return path


def convert_generator_checkpoint(source: str | Path, destination: str | Path) -> GeneratorCheckpoint:
    """Read any supported format, check it builds a Generator, write the canonical form."""
    checkpoint = read_generator_checkpoint(source)
    save_canonical(build_generator(checkpoint), destination)
    return checkpoint


def infer_architecture(
    state_dict: dict[str, torch.Tensor],
    conv_clamp: float | None = None,
    mapping_lr_multiplier: float = 0.01,
) -> GeneratorArchitecture:
    """Read the architecture from the shapes of an NVIDIA-layout generator state dict."""
    if "mapping.embed.weight" in state_dict:
        raise CheckpointError("conditional generators (class labels, c_dim > 0) are not supported")
    if any(key.endswith(".skip.weight") for key in state_dict):
        raise CheckpointError("the 'resnet' synthesis architecture is not supported (only 'skip', as config-f)")
    mapping_indices = sorted(int(m.group(1)) for key in state_dict if (m := _MAPPING_LAYER_KEY.fullmatch(key)))
    resolutions = sorted({int(m.group(1)) for key in state_dict if (m := _BLOCK_KEY.match(key))})
    if not mapping_indices or "synthesis.b4.const" not in state_dict:
        raise CheckpointError("no StyleGAN2 generator tensors (mapping.fc0.weight, synthesis.b4.const) found")
    if mapping_indices != list(range(len(mapping_indices))):
        raise CheckpointError(f"mapping layers are not numbered fc0..fcN: {mapping_indices}")
    if resolutions != [4 * 2**index for index in range(len(resolutions))]:
        raise CheckpointError(f"synthesis blocks are not 4, 8, 16, ...: {resolutions}")
    missing_torgb = [res for res in resolutions if f"synthesis.b{res}.torgb.weight" not in state_dict]
    if missing_torgb:
        raise CheckpointError("only the 'skip' synthesis architecture (a toRGB per block) is supported")

    first_fc = state_dict["mapping.fc0.weight"]
    last_fc = state_dict[f"mapping.fc{mapping_indices[-1]}.weight"]
    block_channels = tuple(int(state_dict[f"synthesis.b{res}.conv1.weight"].shape[0]) for res in resolutions)
    for previous_channels, res in zip(block_channels, resolutions[1:]):
        in_channels = state_dict[f"synthesis.b{res}.conv0.weight"].shape[1]
        if in_channels != previous_channels:
            raise CheckpointError(f"block {res} takes {in_channels} channels but the block before gives {previous_channels}")
    resample_filter = state_dict.get("synthesis.b8.resample_filter")
    return GeneratorArchitecture(
        z_dim=int(first_fc.shape[1]),
        w_dim=int(last_fc.shape[0]),
        img_resolution=resolutions[-1],
        img_channels=int(state_dict[f"synthesis.b{resolutions[-1]}.torgb.weight"].shape[0]),
        block_channels=block_channels,
        mapping_layers=len(mapping_indices),
        mapping_layer_features=int(first_fc.shape[0]) if len(mapping_indices) > 1 else None,
        mapping_lr_multiplier=float(mapping_lr_multiplier),
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        use_noise="synthesis.b4.conv1.noise_strength" in state_dict,
        resample_filter=DEFAULT_RESAMPLE_FILTER if resample_filter is None else _taps_of_filter(resample_filter),
        kernel_size=int(state_dict["synthesis.b4.conv1.weight"].shape[-1]),
    )


def estimate_w_avg(mapping: MappingNetwork, num_samples: int = W_AVG_SAMPLES, seed: int = 0) -> torch.Tensor:
    """Mean of the mapping network's output over `num_samples` seeded z (w_dim float32): what NVIDIA's
    tracked w_avg converges to, and how NVIDIA's projector computes its own starting w."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn([num_samples, mapping.z_dim], generator=generator)
    with torch.inference_mode():
        return mapping(z)[:, 0].mean(dim=0).clone()


# ---------------------------------------------------------------------------------------------


def _taps_of_filter(filter_2d: torch.Tensor) -> tuple[float, ...]:
    """1-D taps whose normalised outer product is `filter_2d` (a separable, normalised KxK filter)."""
    taps = filter_2d.to(torch.float64).sum(dim=0)
    return tuple(float(tap) for tap in taps / taps.sum())


def _as_float32(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.to(torch.float32) for key, tensor in state_dict.items()}


def _read_nvidia_pickle(path: Path) -> GeneratorCheckpoint:
    record = nvidia_pickle_generator(path)
    if record.class_name != "Generator":
        raise CheckpointError(f"{path}: G_ema is a {record.class_name}, not a StyleGAN2 Generator")
    state_dict = _as_float32(record.tensors())
    if "synthesis.b4.const" not in state_dict:
        raise CheckpointError(f"{path}: G_ema is not a StyleGAN2 generator (StyleGAN3 and others are not supported)")
    options = _pickled_generator_options(record)
    architecture = infer_architecture(
        state_dict, conv_clamp=options["conv_clamp"], mapping_lr_multiplier=options["lr_multiplier"]
    )
    return GeneratorCheckpoint(CheckpointFormat.NVIDIA_PICKLE, architecture, state_dict)


def _pickled_generator_options(record: PersistentRecord) -> dict:
    """Hyperparameters of a pickled generator that no tensor shape reveals.

    `conv_clamp` and the mapping's lr multiplier are read from the layers' own records (the attributes
    their forward pass uses), not from G's init kwargs: stylegan3's `--cfg=stylegan2` pickles (NGC's
    StyleGAN2 FFHQ-512/256, AFHQ, MetFaces) leave them out of G's kwargs, so the class defaults of the
    pickled source apply (conv_clamp=256 in `networks_stylegan2.SynthesisBlock`) and only the layers
    record the value. stylegan2-ada nests the other synthesis options in `synthesis_kwargs`; stylegan3
    takes them as top-level keywords."""
    kwargs = record.init_kwargs
    synthesis_kwargs = {**kwargs, **dict(kwargs.get("synthesis_kwargs") or {})}
    mapping_kwargs = dict(kwargs.get("mapping_kwargs") or {})
    if kwargs.get("c_dim", 0):
        raise CheckpointError("conditional generators (c_dim > 0) are not supported")
    if synthesis_kwargs.get("architecture", "skip") != "skip":
        raise CheckpointError(f"synthesis architecture {synthesis_kwargs['architecture']!r} is not supported (only 'skip')")
    for options in (synthesis_kwargs, mapping_kwargs):
        if options.get("activation", "lrelu") != "lrelu":
            raise CheckpointError(f"activation {options['activation']!r} is not supported (only 'lrelu')")
    synthesis_layers = [
        layer
        for block in _child_record(record, "synthesis").children.values()
        for name, layer in block.children.items()
        if name in ("conv0", "conv1", "torgb")
    ]
    mapping_layers = [
        layer for name, layer in _child_record(record, "mapping").children.items() if _MAPPING_LAYER_NAME.fullmatch(name)
    ]
    return {
        "conv_clamp": _recorded_attribute(synthesis_layers, "conv_clamp"),
        # NVIDIA's FullyConnectedLayer keeps its lr multiplier as `bias_gain`.
        "lr_multiplier": _recorded_attribute(mapping_layers, "bias_gain"),
    }


def _child_record(record: PersistentRecord, name: str) -> PersistentRecord:
    child = record.children.get(name)
    if child is None:
        raise CheckpointError(f"G_ema has no {name!r} network record")
    return child


def _recorded_attribute(layers: list[PersistentRecord], attribute: str) -> float | None:
    """The one value of `attribute` that every layer record holds (None stays None)."""
    if not layers:
        raise CheckpointError(f"G_ema holds no layer records to read {attribute!r} from")
    values = set()
    for layer in layers:
        if attribute not in layer.state:
            raise CheckpointError(f"a pickled {layer.class_name} has no {attribute!r} attribute")
        value = layer.state[attribute]
        values.add(None if value is None else float(value))
    if len(values) > 1:
        raise CheckpointError(f"the pickled layers use different {attribute!r} values {sorted(values, key=str)}: one per generator is supported")
    return values.pop()


def _read_torch_file(path: Path) -> GeneratorCheckpoint:
    with torch.serialization.safe_globals(TORCH_FILE_SAFE_GLOBALS):
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # mmap needs the zip format; legacy torch.save files are read whole.
            contents = torch.load(path, map_location="cpu", weights_only=True)
    return _state_dict_checkpoint(path, contents)


def _read_safetensors(path: Path) -> GeneratorCheckpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path), device="cpu")
    if metadata.get("format") == CANONICAL_FORMAT_NAME:
        architecture = GeneratorArchitecture.from_json_dict(json.loads(metadata["architecture"]))
        return GeneratorCheckpoint(CheckpointFormat.CANONICAL, architecture, tensors)
    return _state_dict_checkpoint(path, tensors)


def _state_dict_checkpoint(path: Path, contents: object) -> GeneratorCheckpoint:
    """NVIDIA-layout or rosinality state dict, bare or inside the usual wrappers
    ({'G_ema': ...}, rosinality's {'g_ema': ..., 'latent_avg': ...}, e4e/pSp's {'state_dict': {'decoder.*'}})."""
    if not isinstance(contents, dict):
        raise CheckpointError(f"{path}: holds a {type(contents).__name__}, not a state dict")
    if is_seed_generator_file(contents):
        return _seed_generator_checkpoint(contents)
    latent_avg = contents.get("latent_avg")
    if isinstance(contents.get("G_ema"), dict):
        contents = contents["G_ema"]
    elif isinstance(contents.get("g_ema"), dict):
        contents = contents["g_ema"]
    elif isinstance(contents.get("state_dict"), dict):
        contents = {
            key.removeprefix("decoder."): value
            for key, value in contents["state_dict"].items()
            if key.startswith("decoder.")
        }
    if not all(isinstance(value, torch.Tensor) for value in contents.values()):
        raise CheckpointError(f"{path}: the state dict holds values that are not tensors")
    if is_rosinality_state_dict(contents):
        return _rosinality_checkpoint(contents, latent_avg)
    state_dict = _as_float32(contents)
    return GeneratorCheckpoint(CheckpointFormat.NVIDIA_STATE_DICT, infer_architecture(state_dict), state_dict)


def _rosinality_checkpoint(contents: dict, latent_avg: torch.Tensor | None) -> GeneratorCheckpoint:
    state_dict = _as_float32(rosinality_to_nvidia(contents))
    kernel = contents.get("to_rgbs.0.upsample.kernel")
    architecture = infer_architecture(state_dict)
    if kernel is not None:
        architecture = replace(architecture, resample_filter=_taps_of_filter(kernel))
    if isinstance(latent_avg, torch.Tensor):
        state_dict["mapping.w_avg"] = latent_avg.to(torch.float32).reshape(-1, architecture.w_dim)[0].clone()
    else:
        state_dict["mapping.w_avg"] = estimate_w_avg(_mapping_network(architecture, state_dict))
    return GeneratorCheckpoint(CheckpointFormat.ROSINALITY, architecture, state_dict)


def _seed_generator_checkpoint(contents: dict) -> GeneratorCheckpoint:
    state_dict = _as_float32(seed_generator_to_nvidia(contents))
    architecture = infer_architecture(state_dict, mapping_lr_multiplier=seed_mapping_lr_multiplier(contents))
    architecture = replace(architecture, resample_filter=seed_resample_taps(contents))
    return GeneratorCheckpoint(CheckpointFormat.SEED_GS, architecture, state_dict)


def _mapping_network(architecture: GeneratorArchitecture, state_dict: dict[str, torch.Tensor]) -> MappingNetwork:
    mapping = MappingNetwork(architecture)
    weights = {key.removeprefix("mapping."): value for key, value in state_dict.items() if key.startswith("mapping.fc")}
    mapping.load_state_dict(weights, strict=False)
    return mapping.eval()


def _complete_state_dict(generator: Generator, checkpoint: GeneratorCheckpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors plus any `resample_filter` buffers it omits (they follow from the
    architecture); any other missing or unexpected key is an error."""
    expected = generator.state_dict().keys()
    state_dict = dict(checkpoint.state_dict)
    resample_filter = fir_filter_2d(checkpoint.architecture.resample_filter)
    for key in expected - state_dict.keys():
        if key.endswith("resample_filter"):
            state_dict[key] = resample_filter.clone()
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint.format} checkpoint does not match a StyleGAN2 generator: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return state_dict
