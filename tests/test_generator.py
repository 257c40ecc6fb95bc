"""The StyleGAN2 generator: mapping, truncation, noise modes, gradients, resampling numerics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.generator_fixtures import build_tiny_generator, single_threaded_torch  # noqa: F401 (fixture)
from worker.models.stylegan2 import (
    FixedNoiseGenerator,
    Generator,
    GeneratorArchitecture,
    _transposed_upsampling_conv,
    fir_filter_2d,
    modulated_conv2d,
    upfirdn2d,
    upsample2d,
)

pytestmark = pytest.mark.usefixtures("single_threaded_torch")


@pytest.fixture(scope="module")
def generator() -> Generator:
    return build_tiny_generator(resolution=32, seed=0)


def seeded_z(count: int, dim: int, seed: int = 7) -> torch.Tensor:
    return torch.randn([count, dim], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("resolution", "num_ws"), [(32, 8), (64, 10), (256, 14), (1024, 18)])
def test_num_ws_follows_resolution(resolution: int, num_ws: int) -> None:
    with torch.device("meta"):
        generator = Generator(GeneratorArchitecture.from_channel_rule(resolution))
    assert generator.num_ws == num_ws
    assert generator.mapping.num_ws == num_ws
    assert generator.img_resolution == resolution


def test_config_f_channels() -> None:
    architecture = GeneratorArchitecture.from_channel_rule(1024)
    assert architecture.block_channels == (512, 512, 512, 512, 512, 256, 128, 64, 32)
    assert (architecture.z_dim, architecture.w_dim, architecture.mapping_layers) == (512, 512, 8)


def test_mapping_shape_and_broadcast(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(3, generator.z_dim))
    assert ws.shape == (3, generator.num_ws, generator.w_dim)
    assert torch.equal(ws[:, 0], ws[:, -1])


def test_truncation_zero_gives_w_avg_for_every_z(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(4, generator.z_dim), truncation_psi=0.0)
    assert generator.w_avg.abs().sum() > 0
    assert torch.allclose(ws, generator.w_avg.expand_as(ws), atol=1e-6)


def test_truncation_interpolates_toward_w_avg(generator: Generator) -> None:
    z = seeded_z(2, generator.z_dim)
    full = generator.mapping(z)
    half = generator.mapping(z, truncation_psi=0.5)
    assert torch.allclose(half, generator.w_avg + 0.5 * (full - generator.w_avg), atol=1e-6)
    cut = generator.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.allclose(cut[:, :3], half[:, :3]) and torch.equal(cut[:, 3:], full[:, 3:])


def test_mapping_normalises_z_scale(generator: Generator) -> None:
    z = seeded_z(2, generator.z_dim)
    assert torch.allclose(generator.mapping(z), generator.mapping(3.0 * z), atol=1e-5)


def test_synthesis_shape_and_range(generator: Generator) -> None:
    images = generator.synthesis(generator.mapping(seeded_z(2, generator.z_dim), truncation_psi=0.7))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert torch.isfinite(images).all()


def test_noise_const_is_deterministic_random_is_not(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(1, generator.z_dim))
    assert torch.equal(generator.synthesis(ws, noise_mode="const"), generator.synthesis(ws, noise_mode="const"))
    first = generator.synthesis(ws, noise_mode="random")
    second = generator.synthesis(ws, noise_mode="random")
    assert (first - second).abs().max() > 1e-3
    without = generator.synthesis(ws, noise_mode="none")
    assert torch.equal(without, generator.synthesis(ws, noise_mode="none"))
    assert (without - generator.synthesis(ws, noise_mode="const")).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        generator.synthesis(ws, noise_mode="fixed")


def test_noise_buffers_are_what_const_mode_uses() -> None:
    generator = build_tiny_generator(resolution=32, seed=3)
    buffers = generator.synthesis.noise_buffers()
    assert sorted(buffers) == sorted(
        [f"b{res}.conv{i}.noise_const" for res in (8, 16, 32) for i in (0, 1)] + ["b4.conv1.noise_const"]
    )
    assert buffers["b16.conv0.noise_const"].shape == (16, 16)
    ws = generator.mapping(seeded_z(1, generator.z_dim))
    before = generator.synthesis(ws)
    buffers["b32.conv1.noise_const"].zero_()
    assert (generator.synthesis(ws) - before).abs().max() > 1e-4


def test_noise_resolutions_name_every_noise_input_in_buffer_order(generator: Generator) -> None:
    resolutions = generator.synthesis.noise_resolutions()
    assert [f"{name}.noise_const" for name in resolutions] == list(generator.synthesis.noise_buffers())
    assert resolutions["b4.conv1"] == 4 and resolutions["b32.conv0"] == 32
    without_noise = build_tiny_generator(resolution=16, seed=0, use_noise=False)
    assert without_noise.synthesis.noise_resolutions() == {}


def test_noise_maps_equal_to_the_buffers_give_the_const_image(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(2, generator.z_dim))
    maps = {name[: -len(".noise_const")]: buffer[None, None] for name, buffer in generator.synthesis.noise_buffers().items()}
    assert torch.equal(generator.synthesis(ws, noise=maps), generator.synthesis(ws, noise_mode="const"))


def test_per_sample_noise_maps_give_each_sample_its_own_image(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(2, generator.z_dim))
    draws = torch.Generator().manual_seed(5)
    maps = {
        name: torch.randn((2, 1, side, side), generator=draws)
        for name, side in generator.synthesis.noise_resolutions().items()
    }
    batch = generator.synthesis(ws, noise=maps)
    for index in range(2):
        alone = generator.synthesis(ws[index : index + 1], noise={name: m[index : index + 1] for name, m in maps.items()})
        torch.testing.assert_close(batch[index : index + 1], alone, atol=1e-5, rtol=1e-5)
    swapped = generator.synthesis(ws, noise={name: m.flip(0) for name, m in maps.items()})
    assert (swapped - batch).abs().max() > 1e-3


def test_noise_maps_are_checked(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(2, generator.z_dim))
    maps = {name: torch.zeros((1, 1, side, side)) for name, side in generator.synthesis.noise_resolutions().items()}
    with pytest.raises(ValueError, match="missing"):
        generator.synthesis(ws, noise={name: m for name, m in maps.items() if name != "b8.conv0"})
    with pytest.raises(ValueError, match="b8.conv0"):
        generator.synthesis(ws, noise={**maps, "b8.conv0": torch.zeros((3, 1, 8, 8))})
    with pytest.raises(ValueError, match="noise_mode"):
        generator.synthesis(ws, noise_mode="random", noise=maps)


def test_a_fixed_noise_generator_synthesises_with_its_maps(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(1, generator.z_dim))
    maps = {name: torch.randn((1, 1, side, side)) for name, side in generator.synthesis.noise_resolutions().items()}
    fixed = FixedNoiseGenerator(generator, maps)
    assert torch.equal(fixed.synthesis(ws), generator.synthesis(ws, noise=maps))
    assert (fixed.num_ws, fixed.w_dim, fixed.img_resolution) == (generator.num_ws, generator.w_dim, generator.img_resolution)
    assert fixed.w_avg is generator.w_avg


def test_synthesis_is_differentiable_in_wplus(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(1, generator.z_dim)).detach().requires_grad_(True)
    generator.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and (ws.grad.abs().sum(dim=2) > 0).all()
    assert all(parameter.grad is None for parameter in generator.parameters())


def test_noise_buffers_can_be_optimised() -> None:
    generator = build_tiny_generator(resolution=32, seed=4)
    noise = generator.synthesis.noise_buffers()["b8.conv0.noise_const"].requires_grad_(True)
    generator.synthesis(generator.mapping(seeded_z(1, generator.z_dim))).sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0


def test_no_grad_and_inference_mode_give_the_same_image(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(2, generator.z_dim))
    reference = generator.synthesis(ws)
    with torch.no_grad():
        assert torch.equal(generator.synthesis(ws), reference)
    with torch.inference_mode():
        assert torch.equal(generator.synthesis(ws), reference)


def test_batch_members_do_not_mix(generator: Generator) -> None:
    ws = generator.mapping(seeded_z(3, generator.z_dim))
    batch = generator.synthesis(ws)
    for index in range(3):
        assert torch.allclose(batch[index : index + 1], generator.synthesis(ws[index : index + 1]), atol=1e-5)


def test_grouped_and_shared_weight_modulated_conv_agree(generator: Generator) -> None:
    """Training mode runs the non-fused path (scale activations, one shared-weight conv)."""
    ws = generator.mapping(seeded_z(2, generator.z_dim))
    fused = generator.synthesis(ws)
    generator.train()
    try:
        separate = generator.synthesis(ws)
    finally:
        generator.eval()
    assert torch.allclose(fused, separate, atol=1e-4)


def test_modulated_conv_matches_per_sample_formula() -> None:
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 4, 5, 5), torch.randn(6, 4, 3, 3), torch.randn(2, 4)
    out = modulated_conv2d(x, weight, styles, padding=1)
    for index in range(2):
        sample_weight = weight * styles[index].reshape(1, -1, 1, 1)
        sample_weight = sample_weight / (sample_weight.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        expected = F.conv2d(x[index : index + 1], sample_weight, padding=1)
        assert torch.allclose(out[index : index + 1], expected, atol=1e-5)


def test_upsampling_conv_equals_zero_insertion_reference() -> None:
    """The transposed-conv fast path equals NVIDIA's generic path: zero-insert x2, pad, FIR (gain 4),
    then a true convolution (flipped kernel) with the 3x3 weight."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    fir = fir_filter_2d([1, 3, 3, 1]).double()
    fast = _transposed_upsampling_conv(x, weight, fir, padding=1, groups=1)
    reference = F.conv2d(upfirdn2d(x, fir, up=2, padding=(3, 2, 3, 2), gain=4), weight.flip([2, 3]))
    assert fast.shape == (2, 7, 12, 12)
    assert torch.allclose(fast, reference, atol=1e-12)


def test_fir_upsampling_keeps_constants_constant() -> None:
    upsampled = upsample2d(torch.full([1, 1, 8, 8], 2.0, dtype=torch.float64), fir_filter_2d([1, 3, 3, 1]).double())
    assert upsampled.shape == (1, 1, 16, 16)
    assert torch.allclose(upsampled[..., 2:-2, 2:-2], torch.tensor(2.0, dtype=torch.float64))


def test_fp16_and_channels_last_options_stay_close() -> None:
    generator = build_tiny_generator(resolution=64, seed=1)
    ws = generator.mapping(seeded_z(2, generator.z_dim), truncation_psi=0.7)
    reference = generator.synthesis(ws)
    generator.set_precision(fp16_resolutions=0, channels_last=True)
    assert torch.allclose(generator.synthesis(ws), reference, atol=1e-5)
    generator.set_precision(fp16_resolutions=2, channels_last=True)
    assert [block.use_fp16 for block in generator.synthesis.blocks()] == [False, False, False, True, True]
    half = generator.synthesis(ws)
    assert half.dtype == torch.float32
    assert (half - reference).abs().max() < 0.05
