"""`chinfix bench invert`: projector speed at full FFHQ config-f size, random weights.

Two tables. Step time: median ms per Adam step (synthesis with the optimised noise maps + LPIPS + noise
regulariser + backward + update + noise re-normalisation) of the real `project` loop, per precision, space and
batch size, eager and (CUDA only) captured as a CUDA graph and replayed (`CHINFIX_CAPTURE`). The math is the
worker's: cuDNN autotuning on CUDA, TF32 as `CHINFIX_TF32` says for every precision but `fp32` (exact float32, the
row to compare against), fp16 as the worker loads it (the generator's float16 blocks, channels-last; LPIPS float32).
Every preset runs this same step; they differ only in the step count. Whole inversion: seconds per crop for each
preset, with the worker's `CHINFIX_CAPTURE`. With `--whole measured` each preset is run to the end of its schedule; with `extrapolated`
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
        "fp32: TF32 off; bf16: generator and VGG under bfloat16 autocast (CHINFIX_PRECISION=bf16)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import torch

    from chinfix.settings import Settings
    from worker.bench.timing import peak_memory_mib, print_table, reset_peak_memory, synchronize
    from worker.registry import configure_cuda_math, resolve_device
    from worker.models.lpips import build_random_lpips
    from worker.models.stylegan2 import Generator, GeneratorArchitecture
    from worker.pipeline.invert import (
        INVERSION_PRESETS,
        SPACES,
        W_STATISTICS_SAMPLES,
        InversionConfig,
        loop_precision,
        project,
        w_statistics,
    )
    from worker.pipeline.steps import CAPTURE_WARMUP_STEPS, capture_warmup

    settings = Settings()
    device = resolve_device(args.device)
    configure_cuda_math(device, settings.tf32)
    precisions = _precisions(args.precisions, device)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    spaces = [name.strip() for name in args.spaces.split(",")]
    if set(spaces) - set(SPACES):
        raise SystemExit(f"unknown space(s): {sorted(set(spaces) - set(SPACES))}; choose from {', '.join(SPACES)}")
    presets = [name.strip() for name in args.presets.split(",")]
    whole = args.whole if args.whole != "auto" else ("measured" if device.type == "cuda" else "extrapolated")
    captures = device.type == "cuda"

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

    def step_ms(count: int, config: InversionConfig) -> float:
        """Median of the last `repeats` steps: after the first (allocations, cuDNN autotuning) or, captured, after the
        warm-up steps and the first replay (whose interval holds the capture)."""
        lead = 1 + (capture_warmup(device, config.capture, 10**6) or 0)
        steps_ms, _ = timed_inversion(count, dataclasses.replace(config, steps=lead + args.repeats + 1))
        return statistics.median(steps_ms[-args.repeats :])

    step_rows, step_ms_at = [], {}
    for precision in precisions:
        _set_precision(precision, generator, device, settings.tf32)
        for space in spaces:
            for count in batch_sizes:
                reset_peak_memory(device)
                config = InversionConfig(steps=1, space=space, precision=loop_precision(precision))
                eager_ms = step_ms(count, dataclasses.replace(config, capture="off"))
                captured_ms = step_ms(count, dataclasses.replace(config, capture="auto")) if captures else None
                step_ms_at[(precision, space, count)] = captured_ms if captured_ms and settings.capture == "auto" else eager_ms
                captured = f"{captured_ms:,.1f}" if captured_ms else "CUDA only"
                ratio = f"{eager_ms / captured_ms:.2f}" if captured_ms else "-"
                step_rows.append((precision, space, count, eager_ms, eager_ms / count, captured, ratio, peak_memory_mib(device)))
    print_table(
        f"invert: one projector step at {args.resolution}px, random config-f weights, {device.type} "
        f"(median of {args.repeats} steps; the same step for every preset; captured: after {CAPTURE_WARMUP_STEPS} eager "
        "steps, one step replayed as a CUDA graph)",
        ("precision", "space", "batch", "eager ms / step", "eager ms / step / crop", "captured ms / step", "eager / captured", "peak MiB"),
        step_rows,
    )
    print(f"w_avg and w_std from {W_STATISTICS_SAMPLES:,} mapped z: {w_stats_ms:,.0f} ms, once per loaded generator")

    whole_rows = []
    paper_seconds: dict[tuple[str, int], float] = {}
    space = spaces[0]
    for precision in precisions:
        _set_precision(precision, generator, device, settings.tf32)
        for count in batch_sizes:
            for name in sorted(presets, key=lambda preset: preset != "paper"):
                config = dataclasses.replace(
                    INVERSION_PRESETS[name], space=space, precision=loop_precision(precision), capture=settings.capture
                )
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
        f"invert: whole inversion per preset at {args.resolution}px, {device.type}, space {space}, "
        f"CHINFIX_CAPTURE={settings.capture}",
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


def _set_precision(precision: str, generator, device, tf32: bool) -> None:
    """As the worker runs `CHINFIX_PRECISION`: fp32 here is exact float32 (TF32 off, the reference row); tf32 is the
    worker's float32 with TF32 on; fp16 the generator's float16 blocks and channels-last as the registry loads it
    (LPIPS float32, as the worker's), TF32 elsewhere per `CHINFIX_TF32`; bf16 float32 weights under bfloat16
    autocast (set by the inversion config), TF32 elsewhere per `CHINFIX_TF32`."""
    import torch

    from worker.registry import generator_precision

    allow_tf32 = precision == "tf32" or (precision != "fp32" and tf32)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    fp16_resolutions, channels_last = generator_precision("fp16" if precision == "fp16" else "fp32", device)
    generator.set_precision(fp16_resolutions=fp16_resolutions, channels_last=channels_last)
