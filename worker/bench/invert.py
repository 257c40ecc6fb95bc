"""`chinfix bench invert`: projector speed at full FFHQ config-f size, random weights.

Two tables. Step time: median ms per Adam step (synthesis with the optimised noise maps + LPIPS + noise
regulariser + backward + update + noise re-normalisation) of the real `project` loop, per precision, space and
batch size. Every preset runs this same step; they differ only in the step count. Whole inversion: seconds per
crop for each preset. With `--whole measured` each preset is run to the end of its schedule; with `extrapolated`
it is the preset's step count times the measured step time, and the table says so. `auto` measures on CUDA and
extrapolates on CPU, where a 1000-step run at 1024px takes hours. The w_avg / w_std estimate (10,000 mapped z)
is timed apart: a worker pays it once per loaded generator, not per job.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=1024, help="generator resolution (config-f channel rule)")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes for the step-time table")
    parser.add_argument("--spaces", default="w", help="comma-separated latent spaces for the step-time table (w, wplus)")
    parser.add_argument("--presets", default="fast,quality,paper", help="comma-separated presets for the whole-inversion table")
    parser.add_argument(
        "--whole", choices=("auto", "measured", "extrapolated"), default="auto",
        help="run each preset to the end (measured) or multiply its steps by the step time (extrapolated)",
    )  # fmt: skip
    parser.add_argument(
        "--precisions", default=None,
        help="comma-separated tf32,fp32,fp16,bf16 (CUDA only: tf32, fp16); default: fp32 on CPU, all four on CUDA, "
        "tf32 first: it is how the worker runs float32 on CUDA (cuDNN autotuning on, as in the worker); "
        "bf16: generator and VGG under bfloat16 autocast (CHINFIX_PRECISION=bf16)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import torch

    from worker.bench.timing import peak_memory_mib, print_table, reset_peak_memory, synchronize
    from worker.registry import configure_cuda_math, resolve_device
    from worker.models.lpips import build_random_lpips
    from worker.models.stylegan2 import Generator, GeneratorArchitecture
    from worker.pipeline.invert import (
        INVERSION_PRESETS,
        SPACES,
        W_STATISTICS_SAMPLES,
        InversionConfig,
        project,
        w_statistics,
    )

    device = resolve_device(args.device)
    configure_cuda_math(device)
    precisions = _precisions(args.precisions, device)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    spaces = [name.strip() for name in args.spaces.split(",")]
    if set(spaces) - set(SPACES):
        raise SystemExit(f"unknown space(s): {sorted(set(spaces) - set(SPACES))}; choose from {', '.join(SPACES)}")
    presets = [name.strip() for name in args.presets.split(",")]
    whole = args.whole if args.whole != "auto" else ("measured" if device.type == "cuda" else "extrapolated")

    torch.manual_seed(0)
    generator = Generator(GeneratorArchitecture.from_channel_rule(args.resolution)).eval().requires_grad_(False).to(device)
    metric = build_random_lpips(seed=0, device=device)
    synchronize(device)
    start = time.perf_counter()
    w_stats = w_statistics(generator)
    synchronize(device)
    w_stats_ms = (time.perf_counter() - start) * 1000.0

    def targets(count: int) -> torch.Tensor:
        with torch.no_grad():
            z = torch.randn((count, generator.z_dim), device=device)
            return generator.synthesis(generator.mapping(z), noise_mode="const").clamp(-1, 1)

    def timed_inversion(count: int, config: InversionConfig) -> tuple[list[float], float]:
        """Per-step wall times (ms, from the progress callback) and the whole call's seconds."""
        batch = targets(count)
        stamps: list[float] = []

        def stamp(*_: object) -> None:
            synchronize(device)
            stamps.append(time.perf_counter())

        synchronize(device)
        start = time.perf_counter()
        project(generator, batch, metric, config, w_stats=w_stats, progress=stamp)
        synchronize(device)
        total = time.perf_counter() - start
        steps_ms = [(later - earlier) * 1000.0 for earlier, later in zip(stamps, stamps[1:])]
        return steps_ms, total

    step_rows, step_ms_at = [], {}
    for precision in precisions:
        _set_precision(precision, generator, metric)
        for space in spaces:
            for count in batch_sizes:
                reset_peak_memory(device)
                # The first step is warm-up (allocations, cuDNN autotuning); the rest are timed.
                config = InversionConfig(steps=args.repeats + 2, space=space, precision=_loop_precision(precision))
                steps_ms, _ = timed_inversion(count, config)
                step_ms = statistics.median(steps_ms[1:])
                step_ms_at[(precision, space, count)] = step_ms
                step_rows.append((precision, space, count, step_ms, step_ms / count, peak_memory_mib(device)))
    print_table(
        f"invert: one projector step at {args.resolution}px, random config-f weights, {device.type} "
        f"(median of {args.repeats} steps; the same step for every preset)",
        ("precision", "space", "batch", "ms / step", "ms / step / crop", "peak MiB"),
        step_rows,
    )
    print(f"w_avg and w_std from {W_STATISTICS_SAMPLES:,} mapped z: {w_stats_ms:,.0f} ms, once per loaded generator")

    whole_rows = []
    paper_seconds: dict[tuple[str, int], float] = {}
    space = spaces[0]
    for precision in precisions:
        _set_precision(precision, generator, metric)
        for count in batch_sizes:
            for name in sorted(presets, key=lambda preset: preset != "paper"):
                config = dataclasses.replace(INVERSION_PRESETS[name], space=space, precision=_loop_precision(precision))
                if whole == "measured":
                    _, seconds = timed_inversion(count, config)
                else:
                    seconds = config.steps * step_ms_at[(precision, space, count)] / 1000.0
                if name == "paper":
                    paper_seconds[(precision, count)] = seconds
                paper = paper_seconds.get((precision, count))
                ratio = f"{seconds / paper:.3f}" if paper else None
                whole_rows.append((name, precision, count, config.steps, seconds / count, ratio, whole))
    print_table(
        f"invert: whole inversion per preset at {args.resolution}px, {device.type}, space {space}",
        ("preset", "precision", "batch", "steps", "s / crop", "time / paper", "how"),
        whole_rows,
    )
    return 0


def _precisions(requested: str | None, device) -> list[str]:
    if requested is None:
        return ["tf32", "fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32"]
    precisions = [name.strip() for name in requested.split(",")]
    unknown = set(precisions) - {"fp32", "tf32", "fp16", "bf16"}
    if unknown:
        raise SystemExit(f"unknown precision(s): {sorted(unknown)}")
    if device.type != "cuda" and set(precisions) - {"fp32", "bf16"}:
        raise SystemExit("tf32 and fp16 need CUDA")
    return precisions


def _loop_precision(precision: str) -> str:
    return "bf16" if precision == "bf16" else "fp32"


def _set_precision(precision: str, generator, metric) -> None:
    """fp32: exact float32 convolutions and matmuls; tf32: TF32 tensor cores (the worker's setting on CUDA); fp16:
    the 4 highest generator resolutions (NVIDIA's num_fp16_res) and the LPIPS trunk in float16, TF32 elsewhere;
    bf16: float32 weights under bfloat16 autocast (set by the inversion config), TF32 elsewhere."""
    import torch

    from worker.models.stylegan2 import NVIDIA_FP16_RESOLUTIONS

    allow_tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    fp16 = precision == "fp16"
    generator.set_precision(fp16_resolutions=NVIDIA_FP16_RESOLUTIONS if fp16 else 0)
    metric.vgg.to(torch.float16 if fp16 else torch.float32)
