"""Checkpoint loading: every format gives the same generator; unsafe pickles are refused unexecuted."""

from __future__ import annotations

import argparse
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from chinfix.cli import main as chinfix_main
from tests.generator_fixtures import (
    CHECKPOINT_FORMATS,
    NVIDIA_PICKLE_LAYOUTS,
    EasyDictRecord,
    GlobalCall,
    GlobalName,
    build_tiny_generator,
    nvidia_pickle_bytes,
    rosinality_state_dict,
    rosinality_training_checkpoint,
    save_generator_as,
    seed_gs_contents,
    single_threaded_torch,  # noqa: F401 (fixture)
)
from worker.models.checkpoints import (
    CheckpointError,
    CheckpointFormat,
    convert_generator_checkpoint,
    load_generator,
    read_generator_checkpoint,
)
from worker.models.nvidia_pickle import load_nvidia_pickle
from worker.models.stylegan2 import Generator, GeneratorArchitecture

pytestmark = pytest.mark.usefixtures("single_threaded_torch")

SUFFIXES = {
    "canonical": ".safetensors",
    "nvidia-state-dict": ".pt",
    "nvidia-safetensors": ".safetensors",
    "nvidia-pickle": ".pkl",
    "rosinality": ".pt",
}
DETECTED = {
    "canonical": CheckpointFormat.CANONICAL,
    "nvidia-state-dict": CheckpointFormat.NVIDIA_STATE_DICT,
    "nvidia-safetensors": CheckpointFormat.NVIDIA_STATE_DICT,
    "nvidia-pickle": CheckpointFormat.NVIDIA_PICKLE,
    "rosinality": CheckpointFormat.ROSINALITY,
}


def reference_images(generator: Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn([2, generator.z_dim], generator=torch.Generator().manual_seed(11))
    ws = generator.mapping(z, truncation_psi=0.7)
    return ws, generator.synthesis(ws)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("checkpoint_format", CHECKPOINT_FORMATS)
def test_every_format_loads_into_the_same_generator(tmp_path: Path, checkpoint_format: str, resolution: int) -> None:
    original = build_tiny_generator(resolution=resolution, seed=resolution)
    path = save_generator_as(original, tmp_path / f"g{SUFFIXES[checkpoint_format]}", checkpoint_format)
    assert read_generator_checkpoint(path).format == DETECTED[checkpoint_format]

    loaded = load_generator(path)
    ws, expected = reference_images(original)
    assert loaded.num_ws == original.num_ws and loaded.img_resolution == resolution
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.w_avg, original.w_avg)
    assert (loaded.synthesis(ws) - expected).abs().max() <= 1e-6
    assert (loaded.mapping(torch.ones(1, loaded.z_dim)) - original.mapping(torch.ones(1, loaded.z_dim))).abs().max() <= 1e-6


def test_legacy_torch_save_format(tmp_path: Path) -> None:
    original = build_tiny_generator(resolution=32, seed=3)
    torch.save(original.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    ws, expected = reference_images(original)
    assert (load_generator(tmp_path / "legacy.pt").synthesis(ws) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("protocol", [3, 4, 5])  # Python 3 pickles: 3 before 3.8, then 4
def test_nvidia_pickle_protocols(tmp_path: Path, protocol: int) -> None:
    original = build_tiny_generator(resolution=32, seed=1)
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(nvidia_pickle_bytes(original, protocol=protocol))
    ws, expected = reference_images(original)
    assert (load_generator(path).synthesis(ws) - expected).abs().max() <= 1e-6


def test_stylegan3_pickle_clamps_as_its_layers_do(tmp_path: Path) -> None:
    """stylegan3's `--cfg=stylegan2` pickles (NGC's FFHQ-512/256, AFHQ, MetFaces) leave conv_clamp out of
    G's kwargs: the class default 256 applies, and only the layer records say so."""
    original = build_tiny_generator(resolution=32, seed=12, conv_clamp=256.0)
    with torch.no_grad():
        original.synthesis.b4.const.mul_(1000)  # activations beyond 256: the clamp shapes the image
    path = tmp_path / "stylegan2-ffhq-512x512.pkl"
    path.write_bytes(nvidia_pickle_bytes(original, layout="stylegan3"))
    g_kwargs = load_nvidia_pickle(path)["G_ema"].init_kwargs
    assert "conv_clamp" not in g_kwargs and "synthesis_kwargs" not in g_kwargs

    loaded = load_generator(path)
    assert (loaded.architecture.conv_clamp, loaded.architecture.mapping_lr_multiplier) == (256.0, 0.01)
    ws, expected = reference_images(original)
    assert (loaded.synthesis(ws) - expected).abs().max() <= 1e-6
    unclamped = Generator(replace(original.architecture, conv_clamp=None)).eval()
    unclamped.load_state_dict(original.state_dict())
    assert (unclamped.synthesis(ws) - expected).abs().max() > 1.0


@pytest.mark.parametrize("layout", NVIDIA_PICKLE_LAYOUTS)
@pytest.mark.parametrize(("conv_clamp", "lr_multiplier"), [(256.0, 0.01), (None, 0.05), (64.0, 0.01)])
def test_nvidia_pickle_hyperparameters_come_from_the_layers(
    tmp_path: Path, layout: str, conv_clamp: float | None, lr_multiplier: float
) -> None:
    original = build_tiny_generator(resolution=32, seed=2, conv_clamp=conv_clamp, mapping_lr_multiplier=lr_multiplier)
    path = tmp_path / "g.pkl"
    path.write_bytes(nvidia_pickle_bytes(original, layout=layout))
    architecture = read_generator_checkpoint(path).architecture
    assert (architecture.conv_clamp, architecture.mapping_lr_multiplier) == (conv_clamp, lr_multiplier)
    loaded = load_generator(path)
    z = torch.randn(2, original.z_dim, generator=torch.Generator().manual_seed(4))
    assert (loaded.mapping(z) - original.mapping(z)).abs().max() <= 1e-6
    ws, expected = reference_images(original)
    assert (loaded.synthesis(ws) - expected).abs().max() <= 1e-6


def test_g_kwargs_that_say_nothing_leave_the_layers_to_decide(tmp_path: Path) -> None:
    original = build_tiny_generator(resolution=32, seed=2, conv_clamp=128.0, mapping_lr_multiplier=0.05)
    silent = EasyDictRecord(z_dim=original.z_dim, c_dim=0, w_dim=original.w_dim, img_resolution=32, img_channels=3)
    path = tmp_path / "g.pkl"
    path.write_bytes(nvidia_pickle_bytes(original, extra_state={"_init_kwargs": silent}))
    architecture = read_generator_checkpoint(path).architecture
    assert (architecture.conv_clamp, architecture.mapping_lr_multiplier) == (128.0, 0.05)


def test_layers_that_clamp_differently_are_refused(tmp_path: Path) -> None:
    generator = build_tiny_generator(resolution=32, seed=2, conv_clamp=256.0)
    generator.synthesis.b8.conv1.conv_clamp = 100.0
    path = tmp_path / "g.pkl"
    path.write_bytes(nvidia_pickle_bytes(generator, layout="stylegan3"))
    with pytest.raises(CheckpointError, match="different 'conv_clamp'"):
        load_generator(path)


def test_architecture_is_inferred_from_shapes(tmp_path: Path) -> None:
    original = build_tiny_generator(
        resolution=64, seed=5, channel_base=512, channel_max=24, z_dim=20, w_dim=24, mapping_layers=3
    )
    path = save_generator_as(original, tmp_path / "other.pt", "nvidia-state-dict")
    architecture = read_generator_checkpoint(path).architecture
    assert architecture.block_channels == original.architecture.block_channels == (24, 24, 24, 16, 8)
    assert (architecture.z_dim, architecture.w_dim, architecture.mapping_layers) == (20, 24, 3)
    ws, expected = reference_images(original)
    assert (load_generator(path).synthesis(ws) - expected).abs().max() <= 1e-6


def test_config_f_1024_state_dict_loads_and_synthesises(tmp_path: Path) -> None:
    """The issue's acceptance check: a random config-f generator in NVIDIA's state-dict layout."""
    torch.manual_seed(0)
    original = Generator(GeneratorArchitecture.from_channel_rule(1024))
    path = tmp_path / "stylegan2-config-f-random.pt"
    torch.save(original.state_dict(), path)
    generator = load_generator(path)
    assert generator.architecture == GeneratorArchitecture.from_channel_rule(
        1024, mapping_layer_features=512, resample_filter=(0.125, 0.375, 0.375, 0.125)
    )
    with torch.inference_mode():
        image = generator.synthesis(generator.mapping(torch.randn(1, 512)))
    assert image.shape == (1, 3, 1024, 1024) and torch.isfinite(image).all()


def test_rosinality_key_layout_matches_its_generator() -> None:
    """Names and shapes of rosinality's Generator(size=16, style_dim=32, n_mlp=8).state_dict()."""
    state = rosinality_state_dict(build_tiny_generator(resolution=16, seed=0))
    expected = {f"style.{i}.{kind}" for i in range(1, 9) for kind in ("weight", "bias")}
    expected |= {"input.input", "to_rgb1.bias", *(f"noises.noise_{i}" for i in range(5))}
    for prefix in ("conv1", "convs.0", "convs.1", "convs.2", "convs.3"):
        expected |= {f"{prefix}.{name}" for name in ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "noise.weight", "activate.bias")}
    expected |= {"convs.0.conv.blur.kernel", "convs.2.conv.blur.kernel"}
    for prefix in ("to_rgb1", "to_rgbs.0", "to_rgbs.1"):
        expected |= {f"{prefix}.{name}" for name in ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "bias")}
    expected |= {"to_rgbs.0.upsample.kernel", "to_rgbs.1.upsample.kernel"}
    assert set(state) == expected
    assert state["input.input"].shape == (1, 32, 4, 4)
    assert state["convs.0.conv.weight"].shape == (1, 32, 32, 3, 3)
    assert state["noises.noise_1"].shape == state["noises.noise_2"].shape == (1, 1, 8, 8)
    assert state["to_rgbs.1.bias"].shape == (1, 3, 1, 1)
    assert state["conv1.noise.weight"].shape == (1,)


def test_rosinality_without_latent_avg_estimates_it(tmp_path: Path) -> None:
    original = build_tiny_generator(resolution=32, seed=6)
    torch.save({"g_ema": rosinality_state_dict(original)}, tmp_path / "550000.pt")
    loaded = load_generator(tmp_path / "550000.pt")
    assert (loaded.w_avg - original.w_avg).norm() < 0.05 * original.w_avg.norm()
    ws, expected = reference_images(original)
    assert (loaded.synthesis(ws) - expected).abs().max() <= 1e-6


def test_rosinality_training_checkpoint_with_its_argparse_namespace(tmp_path: Path) -> None:
    original = build_tiny_generator(resolution=32, seed=13)
    path = tmp_path / "010000.pt"
    torch.save(rosinality_training_checkpoint(original), path)
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(path, weights_only=True)  # what a weights-only load refuses without the allow-list
    assert read_generator_checkpoint(path).format == CheckpointFormat.ROSINALITY
    loaded = load_generator(path)
    ws, expected = reference_images(original)
    assert (loaded.synthesis(ws) - expected).abs().max() <= 1e-6
    assert (loaded.w_avg - original.w_avg).norm() < 0.05 * original.w_avg.norm()


def test_payload_inside_a_training_namespace_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    generator = build_tiny_generator(resolution=32)
    path = tmp_path / "evil.pt"
    args = argparse.Namespace(path="lmdb", hook=ShellPayload(f"touch {marker}"))
    torch.save(rosinality_training_checkpoint(generator, args=args), path)
    with pytest.raises(CheckpointError, match="system"):
        load_generator(path)
    assert not marker.exists()


def test_e4e_style_checkpoint_uses_the_decoder(tmp_path: Path) -> None:
    original = build_tiny_generator(resolution=32, seed=7)
    state = {f"decoder.{key}": value for key, value in rosinality_state_dict(original).items()}
    state["encoder.conv.weight"] = torch.zeros(3)
    torch.save({"state_dict": state, "latent_avg": original.w_avg.expand(8, -1).clone(), "opts": {"x": 1}}, tmp_path / "e4e.pt")
    loaded = load_generator(tmp_path / "e4e.pt")
    assert torch.equal(loaded.w_avg, original.w_avg)


def test_seed_gs_key_layout_matches_its_generator() -> None:
    """Names and shapes of stylegan2_pytorch's Generator(G_mapping=GeneratorMapping(latent_size=32,
    num_layers=2), G_synthesis=GeneratorSynthesis(latent_size=32, channels=[8, 16, 32, 32])) as
    `models.save` writes them (read off the seed's own code)."""
    contents = seed_gs_contents(build_tiny_generator(resolution=32, seed=0, mapping_layers=2))
    assert set(contents["state_dict"]) == {"dlatent_avg"}
    assert set(contents["G_mapping"]["state_dict"]) == {f"main.{i}.{name}" for i in (0, 1) for name in ("bias", "layer.weight")}
    synthesis = contents["G_synthesis"]["state_dict"]
    layer = ("bias", "layer.weight", "layer.layer.weight", "layer.layer.dense.bias", "layer.layer.dense.layer.weight")
    expected = {"const", "upsample.weight", "upsample.filter.filter_kernel"}
    expected |= {f"conv_blocks.0.conv_block.0.{name}" for name in layer}
    for block in (1, 2, 3):
        expected |= {f"conv_blocks.{block}.conv_block.{index}.{name}" for index in (0, 1) for name in layer}
        expected.add(f"conv_blocks.{block}.conv_block.0.layer.layer.filter.filter_kernel")
    for block in range(4):
        expected |= {f"to_data_layers.{block}.{name}" for name in ("bias", "layer.weight", "layer.dense.bias", "layer.dense.layer.weight")}
    assert set(synthesis) == expected
    assert synthesis["const"].shape == (32, 4, 4)
    assert synthesis["conv_blocks.2.conv_block.0.layer.layer.weight"].shape == (16, 32, 3, 3)
    assert synthesis["conv_blocks.2.conv_block.1.layer.layer.dense.layer.weight"].shape == (16, 32)
    assert synthesis["conv_blocks.1.conv_block.0.layer.weight"].shape == (1,)
    assert synthesis["conv_blocks.1.conv_block.0.layer.layer.filter.filter_kernel"].shape == (1, 1, 4, 4)
    assert synthesis["to_data_layers.3.layer.weight"].shape == (3, 8, 1, 1)
    assert synthesis["upsample.weight"].shape == (1, 1, 1, 1)
    assert contents["G_synthesis"]["kwargs"]["channels"] == [8, 16, 32, 32]


@pytest.mark.parametrize("half", [False, True])  # models.save(half=True) stores float16
def test_seed_gs_loads_into_the_same_generator(tmp_path: Path, half: bool) -> None:
    original = build_tiny_generator(resolution=64, seed=14, mapping_lr_multiplier=0.05)
    contents = seed_gs_contents(original)
    if half:
        for model in (contents, contents["G_mapping"], contents["G_synthesis"]):
            model["state_dict"] = {key: value.half() for key, value in model["state_dict"].items()}
        original.load_state_dict({key: value.half().float() for key, value in original.state_dict().items()})
    path = tmp_path / "Gs.pth"
    torch.save(contents, path)
    checkpoint = read_generator_checkpoint(path)
    assert checkpoint.format == CheckpointFormat.SEED_GS
    assert checkpoint.architecture.mapping_lr_multiplier == 0.05 and checkpoint.architecture.conv_clamp is None

    loaded = load_generator(path)
    assert torch.equal(loaded.w_avg, original.w_avg)
    z = torch.randn(2, original.z_dim, generator=torch.Generator().manual_seed(4))
    assert (loaded.mapping(z) - original.mapping(z)).abs().max() <= 1e-6
    # Gs.pth holds no noise maps: the loader draws them from a fixed seed, the same on every load.
    noise_maps = loaded.synthesis.noise_buffers()
    assert all(torch.equal(noise_maps[name], again) for name, again in load_generator(path).synthesis.noise_buffers().items())
    for name, buffer in original.synthesis.noise_buffers().items():
        buffer.copy_(noise_maps[name])
    ws, expected = reference_images(original)
    assert (loaded.synthesis(ws) - expected).abs().max() <= 1e-5


def test_seed_gs_networks_nvidia_does_not_compute_are_refused(tmp_path: Path) -> None:
    contents = seed_gs_contents(build_tiny_generator(resolution=32))
    contents["G_synthesis"]["kwargs"].update(skip=False, resnet=True)
    torch.save(contents, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="skip=False is not supported"):
        load_generator(tmp_path / "resnet.pth")
    contents = seed_gs_contents(build_tiny_generator(resolution=32))
    contents["G_mapping"]["state_dict"]["embedding.weight"] = torch.zeros(10, 32)
    torch.save(contents, tmp_path / "conditional.pth")
    with pytest.raises(CheckpointError, match="conditional"):
        load_generator(tmp_path / "conditional.pth")
    contents = seed_gs_contents(build_tiny_generator(resolution=32))
    contents["G_mapping"]["kwargs"]["activation"] = "lrelu"  # slope 0.01 in stylegan2_pytorch
    torch.save(contents, tmp_path / "slope.pth")
    with pytest.raises(CheckpointError, match="activation 'lrelu'"):
        load_generator(tmp_path / "slope.pth")


def test_convert_command_writes_the_canonical_form(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    original = build_tiny_generator(resolution=32, seed=8)
    source = save_generator_as(original, tmp_path / "g.pkl", "nvidia-pickle")
    destination = tmp_path / "g.safetensors"
    assert chinfix_main(["models", "convert", str(source), str(destination)]) == 0
    assert "nvidia-pickle" in capsys.readouterr().out
    assert read_generator_checkpoint(destination).format == CheckpointFormat.CANONICAL
    ws, expected = reference_images(original)
    assert (load_generator(destination).synthesis(ws) - expected).abs().max() <= 1e-6
    assert chinfix_main(["models", "convert", str(tmp_path / "absent.pkl"), str(destination)]) == 1


def test_canonical_output_must_be_safetensors(tmp_path: Path) -> None:
    source = save_generator_as(build_tiny_generator(resolution=32), tmp_path / "g.pt", "nvidia-state-dict")
    with pytest.raises(CheckpointError, match="safetensors"):
        convert_generator_checkpoint(source, tmp_path / "g.bin")


# ---------------------------------------------------------------------------------------------
# Refusals


class ShellPayload:
    """A classic malicious pickle: unpickling runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"G_ema": ShellPayload(f"touch {marker}")})
    pickle.loads(payload)  # the payload is real: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="refusing to load (posix|os|nt).system"):
        load_generator(path)
    assert not marker.exists()


def test_malicious_torch_file_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": ShellPayload(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match="system"):
        load_generator(path)
    assert not marker.exists()


def test_payload_inside_a_network_record_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    generator = build_tiny_generator(resolution=32)
    payload = GlobalCall(GlobalName("builtins", "exec"), (f"open({str(marker)!r}, 'w').write('x')",))
    path = tmp_path / "evil.pkl"
    path.write_bytes(nvidia_pickle_bytes(generator, extra_state={"_init_args": (payload,)}))
    with pytest.raises(CheckpointError, match="refusing to load builtins.exec"):
        load_generator(path)
    assert not marker.exists()


def test_embedded_module_source_is_never_executed(tmp_path: Path) -> None:
    """NVIDIA's own loader exec()s each record's module_src; ours must only keep it as text."""
    marker = tmp_path / "pwned"
    original = build_tiny_generator(resolution=32, seed=9)
    path = tmp_path / "g.pkl"
    path.write_bytes(nvidia_pickle_bytes(original, module_src=f"open({str(marker)!r}, 'w').write('x')\n"))
    ws, expected = reference_images(original)
    assert (load_generator(path).synthesis(ws) - expected).abs().max() <= 1e-6
    assert not marker.exists()


def test_torch_module_classes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain-torch.pkl"
    path.write_bytes(pickle.dumps({"G_ema": torch.nn.Linear(2, 2)}))
    with pytest.raises(CheckpointError, match="refusing to load torch.nn"):
        load_generator(path)


def test_unsupported_generators_are_refused(tmp_path: Path) -> None:
    state = build_tiny_generator(resolution=32).state_dict()
    torch.save({**state, "mapping.embed.weight": torch.zeros(32, 10)}, tmp_path / "conditional.pt")
    with pytest.raises(CheckpointError, match="conditional"):
        load_generator(tmp_path / "conditional.pt")
    torch.save({**state, "synthesis.b8.skip.weight": torch.zeros(32, 32, 1, 1)}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="resnet"):
        load_generator(tmp_path / "resnet.pt")
    torch.save({key: value for key, value in state.items() if key != "synthesis.b16.conv1.bias"}, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_generator(tmp_path / "cut.pt")


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a network")
    with pytest.raises(CheckpointError, match="not a pickle"):
        load_generator(tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no StyleGAN2 generator"):
        load_generator(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "absent.pkl")
