"""Tiny StyleGAN2 generators for tests, and writers for every checkpoint format the loader reads.

For other engineers' tests:
    G = build_tiny_generator(resolution=32, seed=0)       # eval mode, requires_grad off, CPU
    path = save_tiny_generator(tmp_path / "g.safetensors", resolution=32)   # then load_generator(path)
    pytestmark = pytest.mark.usefixtures("single_threaded_torch")   # after importing that fixture:
                                                          # tiny models run ~50x faster on a busy machine

Tiny generators have random weights but non-zero noise strengths and biases and a real `w_avg`
(the mean of the mapping output), so noise, truncation and bias paths all matter in tests.
The NVIDIA-pickle and rosinality writers describe those foreign formats independently of the
loader (see the docstrings), so loading what they write tests the loader's reading of the formats.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.models.checkpoints import save_canonical
from worker.models.stylegan2 import Generator, GeneratorArchitecture, fir_filter_2d

TINY_CHANNEL_MAX = 32
TINY_W_DIM = 32
CHECKPOINT_FORMATS = ("canonical", "nvidia-state-dict", "nvidia-safetensors", "nvidia-pickle", "rosinality")


@pytest.fixture(scope="module")
def single_threaded_torch():
    """Tiny models run fastest on one thread; with several threads on a shared, busy machine, OpenMP
    spinning made a 32px synthesis ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_architecture(resolution: int = 32, **overrides: object) -> GeneratorArchitecture:
    """Channels 32 at 4..8 px, halving per resolution after that (down to 4); z and w of 32."""
    options = dict(channel_base=8 * TINY_CHANNEL_MAX, channel_max=TINY_CHANNEL_MAX, z_dim=TINY_W_DIM, w_dim=TINY_W_DIM)
    options.update(overrides)
    architecture = GeneratorArchitecture.from_channel_rule(resolution, **options)
    return dataclasses.replace(architecture, block_channels=tuple(max(c, 4) for c in architecture.block_channels))


def build_tiny_generator(resolution: int = 32, seed: int = 0, **architecture_overrides: object) -> Generator:
    """A random StyleGAN2 generator (eval mode, requires_grad off), deterministic for a seed."""
    torch.manual_seed(seed)
    generator = Generator(tiny_architecture(resolution, **architecture_overrides)).eval()
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("noise_strength"):
                parameter.copy_(0.1 + 0.2 * torch.rand([]))
            elif name.endswith("bias") and "affine" not in name:
                parameter.copy_(0.1 * torch.randn_like(parameter))
        z = torch.randn([2000, generator.z_dim], generator=torch.Generator().manual_seed(seed + 1))
        generator.mapping.w_avg.copy_(generator.mapping(z)[:, 0].mean(dim=0))
    return generator.requires_grad_(False)


def save_tiny_generator(
    path: str | Path, resolution: int = 32, seed: int = 0, format: str = "canonical", **architecture_overrides: object
) -> Path:
    """Build a tiny generator and write it in one of `CHECKPOINT_FORMATS`; returns `path`."""
    return save_generator_as(build_tiny_generator(resolution, seed, **architecture_overrides), path, format)


def save_generator_as(generator: Generator, path: str | Path, format: str) -> Path:
    path = Path(path)
    if format == "canonical":
        return save_canonical(generator, path)
    if format == "nvidia-state-dict":
        torch.save(generator.state_dict(), path)
    elif format == "nvidia-safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in generator.state_dict().items()}, str(path))
    elif format == "nvidia-pickle":
        write_nvidia_pickle(generator, path)
    elif format == "rosinality":
        torch.save({"g_ema": rosinality_state_dict(generator), "latent_avg": generator.w_avg.clone()}, path)
    else:
        raise ValueError(f"unknown checkpoint format {format!r}; one of {CHECKPOINT_FORMATS}")
    return path


# ---------------------------------------------------------------------------------------------
# rosinality layout (stylegan2-pytorch model.py: style.{1..8}, input, conv1, to_rgb1, convs.{2k,2k+1},
# to_rgbs.{k}, noises.noise_{i}; conv weights 1xOxIxKxK, noise strength [1], toRGB bias 1x3x1x1).


def _rosinality_layer(state: dict, nvidia_prefix: str, kernel: torch.Tensor, upsample: bool, to_rgb: bool) -> dict:
    """One StyledConv (or ToRGB) of rosinality's model from an NVIDIA SynthesisLayer (or ToRGBLayer)."""
    tensors = {
        "conv.weight": state[f"{nvidia_prefix}.weight"][None],
        "conv.modulation.weight": state[f"{nvidia_prefix}.affine.weight"],
        "conv.modulation.bias": state[f"{nvidia_prefix}.affine.bias"],
    }
    if to_rgb:
        tensors["bias"] = state[f"{nvidia_prefix}.bias"].reshape(1, -1, 1, 1)
    else:
        tensors["noise.weight"] = state[f"{nvidia_prefix}.noise_strength"].reshape(1)
        tensors["activate.bias"] = state[f"{nvidia_prefix}.bias"]
    if upsample:
        # rosinality keeps the x2 FIR kernel (gain 4) as a buffer: ToRGB's Upsample, the conv's Blur.
        tensors["upsample.kernel" if to_rgb else "conv.blur.kernel"] = kernel * 4
    return tensors


def rosinality_state_dict(generator: Generator) -> dict[str, torch.Tensor]:
    """The generator's weights as rosinality's `Generator.state_dict()` names and shapes them."""
    state = {key: value.clone() for key, value in generator.state_dict().items()}
    kernel = fir_filter_2d(generator.architecture.resample_filter)
    out: dict[str, torch.Tensor] = {}

    def put(prefix: str, tensors: dict) -> None:
        out.update({f"{prefix}.{name}": tensor for name, tensor in tensors.items()})

    for index in range(generator.architecture.mapping_layers):
        out[f"style.{index + 1}.weight"] = state[f"mapping.fc{index}.weight"]
        out[f"style.{index + 1}.bias"] = state[f"mapping.fc{index}.bias"]
    out["input.input"] = state["synthesis.b4.const"][None]
    put("conv1", _rosinality_layer(state, "synthesis.b4.conv1", kernel, upsample=False, to_rgb=False))
    put("to_rgb1", _rosinality_layer(state, "synthesis.b4.torgb", kernel, upsample=False, to_rgb=True))
    out["noises.noise_0"] = state["synthesis.b4.conv1.noise_const"][None, None]
    for block_index, resolution in enumerate(generator.synthesis.block_resolutions[1:]):
        block = f"synthesis.b{resolution}"
        put(f"convs.{2 * block_index}", _rosinality_layer(state, f"{block}.conv0", kernel, upsample=True, to_rgb=False))
        put(f"convs.{2 * block_index + 1}", _rosinality_layer(state, f"{block}.conv1", kernel, upsample=False, to_rgb=False))
        put(f"to_rgbs.{block_index}", _rosinality_layer(state, f"{block}.torgb", kernel, upsample=True, to_rgb=True))
        out[f"noises.noise_{2 * block_index + 1}"] = state[f"{block}.conv0.noise_const"][None, None]
        out[f"noises.noise_{2 * block_index + 2}"] = state[f"{block}.conv1.noise_const"][None, None]
    return out


def rosinality_training_checkpoint(generator: Generator, args: object = None) -> dict:
    """What rosinality's train.py saves every 10,000 iterations (checkpoint/NNNNNN.pt): both generators,
    the discriminator, both Adam states, its command-line `args` (an argparse.Namespace) and the ADA p.
    No `latent_avg`. The discriminator here is a stand-in of one tensor: the loader never reads it."""
    weights = rosinality_state_dict(generator)
    discriminator = {"convs.0.0.weight": torch.randn(8, 3, 1, 1)}
    optimizers = {}
    for name, parameters in (("g_optim", list(weights.values())[:2]), ("d_optim", list(discriminator.values()))):
        optimizer = torch.optim.Adam([p.clone().requires_grad_(True) for p in parameters], lr=0.002, betas=(0.0, 0.99))
        sum(p.square().sum() for group in optimizer.param_groups for p in group["params"]).backward()
        optimizer.step()
        optimizers[name] = optimizer.state_dict()
    if args is None:
        args = argparse.Namespace(
            path="lmdb/ffhq", arch="stylegan2", iter=800000, batch=16, n_sample=64, size=generator.img_resolution,
            r1=10.0, path_regularize=2.0, path_batch_shrink=2, d_reg_every=16, g_reg_every=4, mixing=0.9,
            ckpt=None, lr=0.002, channel_multiplier=2, wandb=False, local_rank=0, augment=False, augment_p=0.0,
            ada_target=0.6, ada_length=500000, ada_every=256, n_gpu=1, distributed=False,
            latent=generator.w_dim, n_mlp=generator.architecture.mapping_layers, start_iter=0,
        )
    return {"g": weights, "d": discriminator, "g_ema": weights, **optimizers, "args": args, "ada_aug_p": 0.0}


# ---------------------------------------------------------------------------------------------
# The seed's Gs.pth: stylegan2_pytorch's `models.save` of the Generator that the seed's
# run_convert_from_tf.py builds from NVIDIA's TF pickle. Nested {'name', 'kwargs', 'state_dict'} per
# model; synthesis blocks `conv_blocks.{b}` (b = 0 for 4x4), layers BiasActivationWrapper >
# NoiseInjectionWrapper > ConvLayer; noise strength [1]; no noise maps (drawn at run time).


def seed_gs_contents(generator: Generator) -> dict:
    """The dict the seed's `torch.save` writes to Gs.pth for this generator's weights."""
    state = {key: value.clone() for key, value in generator.state_dict().items()}
    architecture = generator.architecture
    fir_kernel = (4 * fir_filter_2d(architecture.resample_filter))[None, None]
    mapping = {}
    for index in range(architecture.mapping_layers):
        mapping[f"main.{index}.bias"] = state[f"mapping.fc{index}.bias"]
        mapping[f"main.{index}.layer.weight"] = state[f"mapping.fc{index}.weight"]
    synthesis = {"const": state["synthesis.b4.const"]}
    for block_index, resolution in enumerate(generator.synthesis.block_resolutions):
        block = f"synthesis.b{resolution}"
        for layer_index, layer in enumerate(["conv1"] if block_index == 0 else ["conv0", "conv1"]):
            prefix = f"conv_blocks.{block_index}.conv_block.{layer_index}"
            synthesis[f"{prefix}.bias"] = state[f"{block}.{layer}.bias"]
            synthesis[f"{prefix}.layer.weight"] = state[f"{block}.{layer}.noise_strength"].reshape(1)
            synthesis[f"{prefix}.layer.layer.weight"] = state[f"{block}.{layer}.weight"]
            synthesis[f"{prefix}.layer.layer.dense.bias"] = state[f"{block}.{layer}.affine.bias"]
            synthesis[f"{prefix}.layer.layer.dense.layer.weight"] = state[f"{block}.{layer}.affine.weight"]
            if layer == "conv0":
                synthesis[f"{prefix}.layer.layer.filter.filter_kernel"] = fir_kernel.clone()
        prefix = f"to_data_layers.{block_index}"
        synthesis[f"{prefix}.bias"] = state[f"{block}.torgb.bias"]
        synthesis[f"{prefix}.layer.weight"] = state[f"{block}.torgb.weight"]
        synthesis[f"{prefix}.layer.dense.bias"] = state[f"{block}.torgb.affine.bias"]
        synthesis[f"{prefix}.layer.dense.layer.weight"] = state[f"{block}.torgb.affine.weight"]
    synthesis["upsample.weight"] = torch.ones(1, 1, 1, 1)
    synthesis["upsample.filter.filter_kernel"] = fir_kernel.clone()
    taps = [float(tap) for tap in architecture.resample_filter]
    mapping_kwargs = {
        "activation": "leaky:0.2",
        "num_layers": architecture.mapping_layers,
        "latent_size": architecture.z_dim,
        "hidden": architecture.mapping_layer_features or architecture.w_dim,
        "out_size": architecture.w_dim,
    }
    if architecture.mapping_lr_multiplier != MAPPING_LR_MULTIPLIER_CLASS_DEFAULT:
        mapping_kwargs["lr_mul"] = architecture.mapping_lr_multiplier
    synthesis_kwargs = {
        "activation": "leaky:0.2",
        "conv_filter": taps,
        "skip_filter": taps,
        "skip": True,
        "resnet": False,
        "channels": list(reversed(architecture.block_channels)),
        "latent_size": architecture.w_dim,
        "data_channels": architecture.img_channels,
    }
    return {
        "name": "Generator",
        "kwargs": {},
        "state_dict": collections.OrderedDict(dlatent_avg=state["mapping.w_avg"]),
        "G_mapping": {"name": "GeneratorMapping", "kwargs": mapping_kwargs, "state_dict": mapping},
        "G_synthesis": {"name": "GeneratorSynthesis", "kwargs": synthesis_kwargs, "state_dict": synthesis},
    }


# ---------------------------------------------------------------------------------------------
# NVIDIA network pickles, written with the record structure torch_utils.persistence produces:
# each module is `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
# meta = {type: 'class', version: 6, module_src, class_name, state: module.__dict__}; tensors go
# through torch's own pickling (_rebuild_parameter / _rebuild_tensor_v2 / storage _load_from_bytes).

PERSISTENCE_VERSION = 6
FAKE_MODULE_SRC = "# stands in for training/networks.py; a safe loader never runs this\n"


class GlobalName:
    """A reference to `module.name` that the pickler writes as a GLOBAL without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: object) -> None:
        # pickle insists a REDUCE function be callable; this one only ever gets written.
        raise TypeError(f"{self.module}.{self.name} is a name to pickle, not a function")


class GlobalCall:
    """Pickles as `module.name(*args)`: a REDUCE of a GlobalName."""

    def __init__(self, function: GlobalName, args: tuple) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple:
        return (self.function, self.args)


class ForeignGlobalPickler(pickle._Pickler):
    """Python's reference pickler, taught to write GlobalName references verbatim."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_name(self, obj: GlobalName) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[GlobalName] = _save_global_name


RECONSTRUCT_PERSISTENT_OBJ = GlobalName("torch_utils.persistence", "_reconstruct_persistent_obj")
EASY_DICT = GlobalName("dnnlib.util", "EasyDict")


class EasyDictRecord(dict):
    """Pickles like dnnlib.EasyDict: NEWOBJ of dnnlib.util.EasyDict, then its items."""

    def __reduce__(self) -> tuple:
        return (EASY_DICT, (), None, None, iter(self.items()))


def _picklable_attribute(value: object) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    if isinstance(value, (tuple, list, set)):
        return all(_picklable_attribute(item) for item in value)
    if isinstance(value, dict):
        return all(_picklable_attribute(item) for item in value.values())
    return False


def _module_state(module: torch.nn.Module, init_kwargs: dict) -> dict:
    """The module __dict__ as NVIDIA's pickles hold it: torch's bookkeeping dicts, the layer's plain
    attributes (gains as numpy float64, as np.sqrt produces them), child records, init args/kwargs."""
    state: dict = {}
    for key, value in module.__dict__.items():
        if key in ("_parameters", "_buffers", "_modules") or not _picklable_attribute(value):
            continue
        state[key] = np.float64(value) if key.endswith("gain") and isinstance(value, float) else value
    state["_parameters"] = collections.OrderedDict(
        (name, torch.nn.Parameter(tensor.detach().clone(), requires_grad=False))
        for name, tensor in module._parameters.items()
    )
    state["_buffers"] = collections.OrderedDict((name, tensor.clone()) for name, tensor in module._buffers.items())
    state["_modules"] = collections.OrderedDict(
        (name, _persistent_record(child, {})) for name, child in module._modules.items()
    )
    state["_init_args"] = ()
    state["_init_kwargs"] = EasyDictRecord(init_kwargs)
    return state


def _persistent_record(
    module: torch.nn.Module, init_kwargs: dict, module_src: str = FAKE_MODULE_SRC, extra_state: dict | None = None
) -> GlobalCall:
    meta = dict(
        type="class",
        version=PERSISTENCE_VERSION,
        module_src=module_src,
        class_name=type(module).__name__,
        state={**_module_state(module, init_kwargs), **(extra_state or {})},
    )
    return GlobalCall(RECONSTRUCT_PERSISTENT_OBJ, (meta,))


NVIDIA_PICKLE_LAYOUTS = ("stylegan2-ada", "stylegan3")
CONV_CLAMP_CLASS_DEFAULT = 256.0  # stylegan3 networks_stylegan2.SynthesisBlock(conv_clamp=256)
MAPPING_LR_MULTIPLIER_CLASS_DEFAULT = 0.01  # MappingNetwork(lr_multiplier=0.01), both repositories


def generator_init_kwargs(generator: Generator, layout: str = "stylegan2-ada") -> dict:
    """Generator(**G_kwargs) keywords as the training script of `layout` passes them.

    stylegan2-ada-pytorch's train.py nests the synthesis options in `synthesis_kwargs` and always sets
    conv_clamp. stylegan3's train.py with --cfg=stylegan2 passes them as top-level keywords and sets
    conv_clamp only with --fp32 (to None): otherwise the class default, 256, applies unrecorded. Neither
    sets the mapping's lr_multiplier, so it is named only where it is not the class default."""
    architecture = generator.architecture
    mapping_kwargs = EasyDictRecord(num_layers=architecture.mapping_layers)
    if architecture.mapping_lr_multiplier != MAPPING_LR_MULTIPLIER_CLASS_DEFAULT:
        mapping_kwargs["lr_multiplier"] = architecture.mapping_lr_multiplier
    common = dict(
        z_dim=architecture.z_dim,
        c_dim=0,
        w_dim=architecture.w_dim,
        img_resolution=architecture.img_resolution,
        img_channels=architecture.img_channels,
        mapping_kwargs=mapping_kwargs,
    )
    channels = dict(
        channel_base=architecture.block_channels[-1] * architecture.img_resolution,
        channel_max=max(architecture.block_channels),
    )
    if layout == "stylegan2-ada":
        synthesis_kwargs = EasyDictRecord(
            **channels, num_fp16_res=0, conv_clamp=architecture.conv_clamp, architecture="skip", resample_filter=[1, 3, 3, 1]
        )
        return dict(**common, synthesis_kwargs=synthesis_kwargs)
    if layout == "stylegan3":
        kwargs = dict(**common, **channels, fused_modconv_default="inference_only")
        if architecture.conv_clamp != CONV_CLAMP_CLASS_DEFAULT:
            kwargs.update(num_fp16_res=0, conv_clamp=architecture.conv_clamp)
        return kwargs
    raise ValueError(f"unknown NVIDIA pickle layout {layout!r}; one of {NVIDIA_PICKLE_LAYOUTS}")


def nvidia_pickle_bytes(
    generator: Generator,
    protocol: int = 4,
    module_src: str = FAKE_MODULE_SRC,
    extra_state: dict | None = None,
    layout: str = "stylegan2-ada",
) -> bytes:
    """{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} as a training snapshot holds them;
    `extra_state` is added to the generator record's pickled __dict__. Every layer record carries the
    attributes its forward pass reads (conv_clamp, weight_gain, bias_gain, ...), as NVIDIA's do."""
    record = _persistent_record(generator, generator_init_kwargs(generator, layout), module_src, extra_state)
    top = dict(G=record, D=None, G_ema=record, augment_pipe=None, training_set_kwargs=None)
    stream = io.BytesIO()
    ForeignGlobalPickler(stream, protocol=protocol).dump(top)
    return stream.getvalue()


def write_nvidia_pickle(generator: Generator, path: str | Path, protocol: int = 4, module_src: str = FAKE_MODULE_SRC) -> Path:
    path = Path(path)
    path.write_bytes(nvidia_pickle_bytes(generator, protocol=protocol, module_src=module_src))
    return path
