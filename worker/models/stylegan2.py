"""The StyleGAN2 generator, with the semantics of NVIDIA's stylegan2-ada-pytorch `training/networks.py`
(the same network as stylegan3's `networks_stylegan2.py`), written in plain PyTorch.

Module and tensor names follow NVIDIA's, so `Generator.state_dict()` has NVIDIA's key layout
(`mapping.fc0.weight`, `synthesis.b4.const`, `synthesis.b8.conv0.affine.weight`, ...) and NVIDIA state
dicts load into it unchanged. The numerics follow NVIDIA's reference ('ref') implementations of
`upfirdn2d`, `conv2d_resample` and `bias_act`, which define what the custom CUDA kernels compute.

Only the parts a pretrained unconditional StyleGAN2 generator uses are here: no label conditioning,
no discriminator, no 'orig'/'resnet' synthesis architectures (the published config-f is 'skip').
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

NoiseMode = Literal["const", "random", "none"]
NOISE_MODES: tuple[str, ...] = ("const", "random", "none")

NoiseMaps = Mapping[str, torch.Tensor]
"""Noise inputs by layer name ('b4.conv1', 'b8.conv0', ...): each N x 1 x R x R (one map per sample) or
1 x 1 x R x R (shared by the batch), R the layer's resolution. They stand in for the `noise_const` buffers."""

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEFAULT_RESAMPLE_FILTER = (1.0, 3.0, 3.0, 1.0)
NVIDIA_FP16_RESOLUTIONS = 4
"""How many of the highest resolutions NVIDIA runs in float16 on GPUs (their `num_fp16_res`)."""


@dataclass(frozen=True)
class GeneratorArchitecture:
    """Everything needed to build a `Generator` whose state dict matches a checkpoint.

    `block_channels[i]` is the channel count of the block at resolution 4 * 2**i, up to
    `img_resolution`. The non-shape fields default to NVIDIA's StyleGAN2 config-f values.
    """

    z_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int
    block_channels: tuple[int, ...]
    mapping_layers: int = 8
    mapping_layer_features: int | None = None
    mapping_lr_multiplier: float = 0.01
    conv_clamp: float | None = None
    use_noise: bool = True
    resample_filter: tuple[float, ...] = DEFAULT_RESAMPLE_FILTER
    kernel_size: int = 3

    def __post_init__(self) -> None:
        resolution_log2 = int(math.log2(self.img_resolution)) if self.img_resolution > 0 else 0
        if self.img_resolution < 4 or 2**resolution_log2 != self.img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {self.img_resolution}")
        if len(self.block_channels) != resolution_log2 - 1:
            raise ValueError(
                f"{self.img_resolution}px needs {resolution_log2 - 1} block channel counts "
                f"(4..{self.img_resolution}), got {len(self.block_channels)}"
            )
        if self.mapping_layers < 1:
            raise ValueError("the mapping network needs at least one layer")

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        return tuple(4 * 2**index for index in range(len(self.block_channels)))

    @property
    def num_ws(self) -> int:
        """One w per convolution (1 at 4x4, 2 per later block) plus one for the last toRGB: 18 at 1024."""
        return 2 * len(self.block_channels)

    @classmethod
    def from_channel_rule(
        cls,
        img_resolution: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        z_dim: int = 512,
        w_dim: int = 512,
        **options: object,
    ) -> GeneratorArchitecture:
        """NVIDIA's rule for channels per resolution: min(channel_base // res, channel_max).

        The defaults give config-f (FFHQ 1024: 512 channels up to 64x64, then 256, 128, 64, 32).
        """
        resolutions = [4 * 2**index for index in range(int(math.log2(img_resolution)) - 1)]
        channels = tuple(min(channel_base // resolution, channel_max) for resolution in resolutions)
        return cls(
            z_dim=z_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=3,
            block_channels=channels,
            **options,  # type: ignore[arg-type]
        )

    def to_json_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json_dict(cls, values: dict) -> GeneratorArchitecture:
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown generator architecture fields: {sorted(unknown)}")
        values = dict(values)
        values["block_channels"] = tuple(int(c) for c in values["block_channels"])
        if "resample_filter" in values:
            values["resample_filter"] = tuple(float(t) for t in values["resample_filter"])
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Resampling, bias + activation, modulated convolution (NVIDIA's reference semantics)


def fir_filter_2d(taps: Sequence[float]) -> torch.Tensor:
    """KxK float32 low-pass filter: outer product of the 1-D taps, normalised to unit DC gain."""
    taps_1d = torch.as_tensor(list(taps), dtype=torch.float32)
    kernel = torch.outer(taps_1d, taps_1d)
    return kernel / kernel.sum()


FirKernelCache = dict[tuple[int, float, torch.dtype, torch.device], torch.Tensor]
"""Depthwise FIR kernels (Cx1xKxK, flipped and scaled) a layer has built, by (channels, gain, dtype, device)."""


def depthwise_fir_kernel(
    fir_filter: torch.Tensor, channels: int, gain: float, dtype: torch.dtype, cache: FirKernelCache | None = None
) -> torch.Tensor:
    """The Cx1xKxK kernel `upfirdn2d` convolves with, built once per (channels, gain, dtype, device) when the
    caller keeps a cache: a step of the optimisation loop then launches no kernel-building operations."""
    key = (channels, gain, dtype, fir_filter.device)
    kernel = cache.get(key) if cache is not None else None
    if kernel is None:
        # conv2d correlates; flipping the filter makes this a true convolution, as NVIDIA's default does.
        kernel = (fir_filter * (gain ** (fir_filter.ndim / 2))).to(dtype).flip([0, 1])
        kernel = kernel[None, None].repeat(channels, 1, 1, 1)
        if cache is not None:
            cache[key] = kernel
    return kernel


def upfirdn2d(
    x: torch.Tensor,
    fir_filter: torch.Tensor,
    up: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
    kernel_cache: FirKernelCache | None = None,
) -> torch.Tensor:
    """Zero-insert upsample, pad (negative = crop), convolve with a 2-D FIR filter (NxCxHxW in and out).

    `padding` is (x_before, x_after, y_before, y_after) on the upsampled image, as in NVIDIA's upfirdn2d.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    pad_x0, pad_x1, pad_y0, pad_y1 = padding
    x = F.pad(x, [max(pad_x0, 0), max(pad_x1, 0), max(pad_y0, 0), max(pad_y1, 0)])
    x = x[:, :, max(-pad_y0, 0) : x.shape[2] - max(-pad_y1, 0), max(-pad_x0, 0) : x.shape[3] - max(-pad_x1, 0)]
    kernel = depthwise_fir_kernel(fir_filter, channels, gain, x.dtype, kernel_cache)
    return F.conv2d(x, kernel, groups=channels)


def upsample2d(
    x: torch.Tensor, fir_filter: torch.Tensor, up: int = 2, kernel_cache: FirKernelCache | None = None
) -> torch.Tensor:
    """Upsample NxCxHxW by `up` with the FIR filter; output NxCx(H*up)x(W*up)."""
    taps = fir_filter.shape[-1]
    pad0 = (taps + up - 1) // 2
    pad1 = (taps - up) // 2
    return upfirdn2d(x, fir_filter, up=up, padding=(pad0, pad1, pad0, pad1), gain=up * up, kernel_cache=kernel_cache)


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    activation: Literal["linear", "lrelu"],
    gain: float = 1.0,
    clamp: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Add a per-channel bias (channels on dim 1), apply the activation, scale by `gain`, clamp to +-clamp.

    inplace: `x` is a fresh intermediate the caller owns (a convolution's output, which autograd does not keep):
    bias, gain and activation then overwrite it instead of allocating a tensor each. The gain is applied before
    the leaky ReLU, which is the same function for a positive gain (lrelu(g y) = g lrelu(y)), so that autograd's
    saved activation output is never overwritten.
    """
    if not inplace:
        if bias is not None:
            x = x + bias.reshape([-1 if dim == 1 else 1 for dim in range(x.ndim)])
        if activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE)
        if gain != 1:
            x = x * gain
        if clamp is not None:
            x = x.clamp(-clamp, clamp)
        return x
    if bias is not None:
        x = x.add_(bias.reshape([-1 if dim == 1 else 1 for dim in range(x.ndim)]))
    if gain != 1:
        x = x.mul_(gain)
    if activation == "lrelu":
        x = F.leaky_relu_(x, LRELU_SLOPE)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _transposed_upsampling_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    fir_filter: torch.Tensor,
    padding: int,
    groups: int,
    kernel_cache: FirKernelCache | None = None,
) -> torch.Tensor:
    """x2 upsampling convolution as NVIDIA's conv2d_resample does it (up=2, flip_weight=False):
    strided transposed convolution, then the FIR filter with gain 4. `weight` is OxIxKxK (O, I per group)."""
    up = 2
    out_channels, in_channels_per_group, kernel_h, kernel_w = weight.shape
    taps = fir_filter.shape[-1]
    pad_x0 = padding + (taps + up - 1) // 2 - (kernel_w - 1)
    pad_x1 = padding + (taps - up) // 2 - (kernel_w - up)
    pad_y0 = padding + (taps + up - 1) // 2 - (kernel_h - 1)
    pad_y1 = padding + (taps - up) // 2 - (kernel_h - up)
    weight = weight.reshape(groups, out_channels // groups, in_channels_per_group, kernel_h, kernel_w)
    weight = weight.transpose(1, 2).reshape(groups * in_channels_per_group, out_channels // groups, kernel_h, kernel_w)
    transposed_pad_x = max(min(-pad_x0, -pad_x1), 0)
    transposed_pad_y = max(min(-pad_y0, -pad_y1), 0)
    x = F.conv_transpose2d(x, weight, stride=up, padding=[transposed_pad_y, transposed_pad_x], groups=groups)
    filter_padding = (
        pad_x0 + transposed_pad_x,
        pad_x1 + transposed_pad_x,
        pad_y0 + transposed_pad_y,
        pad_y1 + transposed_pad_y,
    )
    return upfirdn2d(x, fir_filter, padding=filter_padding, gain=up * up, kernel_cache=kernel_cache)


def _conv2d_resample(
    x: torch.Tensor,
    weight: torch.Tensor,
    fir_filter: torch.Tensor | None,
    up: int,
    padding: int,
    groups: int,
    kernel_cache: FirKernelCache | None = None,
) -> torch.Tensor:
    if up == 1:
        return F.conv2d(x, weight, padding=padding, groups=groups)
    if up != 2 or fir_filter is None:
        raise ValueError("only x2 upsampling with a FIR filter is supported")
    return _transposed_upsampling_conv(x, weight, fir_filter, padding, groups, kernel_cache)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    fused: bool = True,
    kernel_cache: FirKernelCache | None = None,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution. x: NxIxHxW, weight: OxIxKxK, styles: NxI, noise broadcastable
    to the NxOxH'xW' output. `fused` runs one grouped convolution with per-sample weights; otherwise the
    styles and demodulation scale the activations around one shared-weight convolution."""
    batch_size = x.shape[0]
    out_channels, in_channels, kernel_h, kernel_w = weight.shape

    if x.dtype == torch.float16 and demodulate:
        # Pre-normalise so the per-sample weights cannot overflow fp16 (demodulation undoes the scale).
        weight = weight * (
            1 / math.sqrt(in_channels * kernel_h * kernel_w) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        )
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    sample_weights = None
    demod_coefficients = None
    if demodulate or fused:
        sample_weights = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)
    if demodulate:
        demod_coefficients = (sample_weights.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()

    if not fused:
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = _conv2d_resample(x, weight.to(x.dtype), resample_filter, up, padding, 1, kernel_cache)
        if demodulate and noise is not None:
            # One fused multiply-add, as NVIDIA's fma op, so both paths round alike.
            return torch.addcmul(noise.to(x.dtype), x, demod_coefficients.to(x.dtype).reshape(batch_size, -1, 1, 1))
        if demodulate:
            x = x * demod_coefficients.to(x.dtype).reshape(batch_size, -1, 1, 1)
        if noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x

    if demodulate:
        sample_weights = sample_weights * demod_coefficients.reshape(batch_size, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    sample_weights = sample_weights.reshape(-1, in_channels, kernel_h, kernel_w)
    x = _conv2d_resample(
        x, sample_weights.to(x.dtype), resample_filter, up, padding, batch_size, kernel_cache
    )
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise.to(x.dtype))
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row of NxD `x` to unit mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ---------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(torch.nn.Module):
    """Linear layer with equalised learning rate: the stored weight is scaled by lr_multiplier/sqrt(in)
    at run time, the stored bias by lr_multiplier."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: Literal["linear", "lrelu"] = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.weight_gain
        bias = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            bias = bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(bias.unsqueeze(0), x, weight.t())
        return bias_act(x.matmul(weight.t()), bias, self.activation, gain=LRELU_GAIN)


class MappingNetwork(torch.nn.Module):
    """z (NxZ) -> ws (N x num_ws x w_dim): 2nd-moment normalisation, `num_layers` lrelu FC layers
    with lr multiplier, broadcast to every style input, optional truncation toward `w_avg`."""

    def __init__(self, architecture: GeneratorArchitecture) -> None:
        super().__init__()
        self.z_dim = architecture.z_dim
        self.w_dim = architecture.w_dim
        self.num_ws = architecture.num_ws
        self.num_layers = architecture.mapping_layers
        layer_features = architecture.mapping_layer_features or architecture.w_dim
        features = [self.z_dim] + [layer_features] * (self.num_layers - 1) + [self.w_dim]
        for index in range(self.num_layers):
            layer = FullyConnectedLayer(
                features[index],
                features[index + 1],
                activation="lrelu",
                lr_multiplier=architecture.mapping_lr_multiplier,
            )
            setattr(self, f"fc{index}", layer)
        self.register_buffer("w_avg", torch.zeros([self.w_dim]))

    def forward(
        self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be N x {self.z_dim}, got {tuple(z.shape)}")
        x = normalize_2nd_moment(z.to(torch.float32))
        for index in range(self.num_layers):
            x = getattr(self, f"fc{index}")(x)
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                ws = self.w_avg.lerp(ws, truncation_psi)
            else:
                truncated = self.w_avg.lerp(ws[:, :truncation_cutoff], truncation_psi)
                ws = torch.cat([truncated, ws[:, truncation_cutoff:]], dim=1)
        return ws


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally x2 upsampling) + per-pixel noise + bias + lrelu."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", fir_filter_2d(resample_filter))
        self.fir_kernels: FirKernelCache = {}
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode, fused: bool, noise_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """noise_map: N or 1 x 1 x R x R, used instead of `noise_const` (noise_mode "const" only)."""
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_map is not None:
            noise = noise_map * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            fused=fused,
            kernel_cache=self.fir_kernels,
        )
        return bias_act(x, self.bias.to(x.dtype), "lrelu", gain=LRELU_GAIN, clamp=self.conv_clamp, inplace=True)


class ToRGBLayer(torch.nn.Module):
    """1x1 modulated convolution to image channels, without demodulation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias.to(x.dtype), "linear", clamp=self.conv_clamp, inplace=True)


class SynthesisBlock(torch.nn.Module):
    """One resolution of the 'skip' synthesis network: (const | upsampling conv0), conv1, toRGB; the
    running RGB image is FIR-upsampled and the block's toRGB output added to it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        architecture: GeneratorArchitecture,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.use_fp16 = False
        self.channels_last = False
        self.register_buffer("resample_filter", fir_filter_2d(architecture.resample_filter))
        self.fir_kernels: FirKernelCache = {}
        layer_options = dict(
            w_dim=w_dim,
            resolution=resolution,
            kernel_size=architecture.kernel_size,
            use_noise=architecture.use_noise,
            resample_filter=architecture.resample_filter,
            conv_clamp=architecture.conv_clamp,
        )
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_options)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_options)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=architecture.conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: NoiseMode,
        noise: NoiseMaps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ws: N x (num_conv + 1) x w_dim; img: Nx3xHxW float32 running image (None for the first block);
        noise: this block's noise maps by layer attribute ('conv0', 'conv1'), if given."""
        noise = noise or {}
        dtype = torch.float16 if self.use_fp16 else torch.float32
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # NVIDIA's rule: per-sample (grouped) weights unless training, or fp16 with a batch
        # (fp16 per-sample weights lose precision).
        fused = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)
        block_ws = ws.unbind(dim=1)
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv1(x, block_ws[0], noise_mode, fused, noise.get("conv1"))
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, block_ws[0], noise_mode, fused, noise.get("conv0"))
            x = self.conv1(x, block_ws[1], noise_mode, fused, noise.get("conv1"))
        rgb = self.torgb(x, block_ws[self.num_conv], fused).to(dtype=torch.float32, memory_format=torch.contiguous_format)
        img = rgb if img is None else upsample2d(img, self.resample_filter, kernel_cache=self.fir_kernels).add_(rgb)
        return x, img


class SynthesisNetwork(torch.nn.Module):
    """ws (N x num_ws x w_dim) -> images (N x img_channels x R x R, float32, about [-1, 1])."""

    def __init__(self, architecture: GeneratorArchitecture) -> None:
        super().__init__()
        self.w_dim = architecture.w_dim
        self.img_resolution = architecture.img_resolution
        self.img_channels = architecture.img_channels
        self.block_resolutions = architecture.block_resolutions
        self.num_ws = architecture.num_ws
        in_channels = 0
        for resolution, out_channels in zip(self.block_resolutions, architecture.block_channels):
            block = SynthesisBlock(
                in_channels,
                out_channels,
                w_dim=architecture.w_dim,
                resolution=resolution,
                img_channels=architecture.img_channels,
                architecture=architecture,
            )
            setattr(self, f"b{resolution}", block)
            in_channels = out_channels

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{resolution}") for resolution in self.block_resolutions]

    def noise_resolutions(self) -> dict[str, int]:
        """Resolution of each layer that takes a noise input, by layer name ('b4.conv1': 4, 'b8.conv0': 8, ...),
        in the order of `noise_buffers`. Empty for a generator without noise inputs."""
        return {
            name: module.resolution
            for name, module in self.named_modules()
            if isinstance(module, SynthesisLayer) and module.use_noise
        }

    def noise_buffers(self) -> dict[str, torch.Tensor]:
        """The per-layer `noise_const` buffers (RxR each) by state-dict name, e.g. 'b8.conv0.noise_const'.

        They are the tensors `noise_mode="const"` uses: an inverter may overwrite them in place, or set
        `requires_grad_(True)` on them and optimise them as NVIDIA's projector does.
        """
        return {name: buffer for name, buffer in self.named_buffers() if name.endswith("noise_const")}

    def forward(self, ws: torch.Tensor, noise_mode: NoiseMode = "const", noise: NoiseMaps | None = None) -> torch.Tensor:
        """noise: a map for every noise input (see `NoiseMaps`), used instead of the `noise_const` buffers: per-sample
        noise, e.g. what an inversion optimised for each crop. Only with noise_mode "const"."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be N x {self.num_ws} x {self.w_dim}, got {tuple(ws.shape)}")
        if noise is not None:
            self._check_noise_maps(noise, noise_mode, batch_size=ws.shape[0])
        ws = ws.to(torch.float32)
        x = img = None
        w_index = 0
        for block in self.blocks():
            # A block's toRGB shares its w with the next block's first convolution.
            block_ws = ws.narrow(1, w_index, block.num_conv + 1)
            prefix = f"b{block.resolution}."
            block_noise = None
            if noise is not None:
                block_noise = {name.removeprefix(prefix): maps for name, maps in noise.items() if name.startswith(prefix)}
            x, img = block(x, img, block_ws, noise_mode, block_noise)
            w_index += block.num_conv
        return img

    def _check_noise_maps(self, noise: NoiseMaps, noise_mode: NoiseMode, batch_size: int) -> None:
        if noise_mode != "const":
            raise ValueError(f"noise maps replace the constant noise: noise_mode must be 'const', got {noise_mode!r}")
        resolutions = self.noise_resolutions()
        if set(noise) != set(resolutions):
            raise ValueError(
                f"noise maps must name exactly the noise inputs {sorted(resolutions)}; "
                f"missing {sorted(set(resolutions) - set(noise))}, unknown {sorted(set(noise) - set(resolutions))}"
            )
        for name, maps in noise.items():
            resolution = resolutions[name]
            if maps.ndim != 4 or maps.shape[0] not in (1, batch_size) or maps.shape[1:] != (1, resolution, resolution):
                raise ValueError(
                    f"noise map {name} must be {batch_size} (or 1) x 1 x {resolution} x {resolution}, got {tuple(maps.shape)}"
                )


class FixedNoiseGenerator:
    """A view of a generator whose synthesis adds the given noise maps instead of its constant noise.

    Stages after the inversion take it in place of the generator, so every image they synthesise (the
    reconstruction, the edit, the diffuse refinement) sees the noise the inversion optimised for that crop.
    Parameters and buffers are the generator's own; nothing is copied.
    """

    def __init__(self, generator: Generator, noise: NoiseMaps) -> None:
        self.generator = generator
        self.noise = dict(noise)
        self.mapping = generator.mapping
        self.z_dim = generator.z_dim
        self.w_dim = generator.w_dim
        self.num_ws = generator.num_ws
        self.img_resolution = generator.img_resolution
        self.img_channels = generator.img_channels

    @property
    def w_avg(self) -> torch.Tensor:
        return self.generator.w_avg

    def synthesis(self, ws: torch.Tensor, noise_mode: NoiseMode = "const") -> torch.Tensor:
        return self.generator.synthesis(ws, noise_mode=noise_mode, noise=self.noise)


class Generator(torch.nn.Module):
    """Unconditional StyleGAN2 generator: `mapping` (z -> ws) and `synthesis` (ws -> images)."""

    def __init__(self, architecture: GeneratorArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        self.z_dim = architecture.z_dim
        self.w_dim = architecture.w_dim
        self.img_resolution = architecture.img_resolution
        self.img_channels = architecture.img_channels
        self.synthesis = SynthesisNetwork(architecture)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(architecture)

    @property
    def w_avg(self) -> torch.Tensor:
        """The tracked average w (w_dim float32), the truncation centre and the usual inversion start."""
        return self.mapping.w_avg

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: NoiseMode = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi=truncation_psi), noise_mode=noise_mode)

    def set_precision(self, fp16_resolutions: int = 0, channels_last: bool = False) -> Generator:
        """Run the `fp16_resolutions` highest-resolution blocks in float16 (NVIDIA's num_fp16_res; it never
        includes 4x4), activations in channels-last memory format if asked. Parameters stay float32 and
        the image is accumulated in float32. Both are meant for CUDA; the default is all float32."""
        resolution_log2 = int(math.log2(self.img_resolution))
        fp16_from = max(2 ** (resolution_log2 + 1 - fp16_resolutions), 8)
        for block in self.synthesis.blocks():
            block.use_fp16 = fp16_resolutions > 0 and block.resolution >= fp16_from
            block.channels_last = channels_last
        return self
