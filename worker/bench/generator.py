"""`chinfix bench generator`: StyleGAN2 mapping + synthesis speed at full FFHQ config-f size.

Random weights (speed does not depend on them), inference mode, noise_mode="const". One row per
precision and batch size: median ms per image, images per second, and peak memory (CUDA: peak
allocated tensor memory of that row; CPU: the process's peak resident set so far, a running maximum).
fp16 is NVIDIA's setting for config-f on GPUs: the 4 highest resolutions in float16, channels-last.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=1024, help="generator resolution (config-f channel rule)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument(
        "--precisions", default=None, help="comma-separated fp32,fp16 (fp16 on CUDA only); default: all the device has"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from worker.bench.timing import median_ms, peak_memory_mib, print_table, reset_peak_memory
    from worker.registry import resolve_device
    from worker.models.stylegan2 import NVIDIA_FP16_RESOLUTIONS, Generator, GeneratorArchitecture

    device = resolve_device(args.device)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    precisions = (args.precisions or ("fp32,fp16" if device.type == "cuda" else "fp32")).split(",")
    if "fp16" in precisions and device.type != "cuda":
        print("fp16 is a CUDA option; benchmarking fp32 only on", device)
        precisions = [precision for precision in precisions if precision != "fp16"]

    torch.manual_seed(0)
    architecture = GeneratorArchitecture.from_channel_rule(args.resolution)
    generator = Generator(architecture).eval().requires_grad_(False).to(device)
    parameter_count = sum(parameter.numel() for parameter in generator.parameters())

    rows = []
    for precision in precisions:
        fp16 = precision == "fp16"
        generator.set_precision(fp16_resolutions=NVIDIA_FP16_RESOLUTIONS if fp16 else 0, channels_last=fp16)
        for batch_size in batch_sizes:
            z = torch.randn([batch_size, generator.z_dim], device=device)

            def generate() -> torch.Tensor:
                with torch.inference_mode():
                    return generator.synthesis(generator.mapping(z), noise_mode="const")

            reset_peak_memory(device)
            # A CPU warm-up of a large batch costs as much as a timed run and changes nothing.
            warmup = 0 if device.type == "cpu" and batch_size > 1 else 1
            milliseconds = median_ms(generate, device, repeats=args.repeats, warmup=warmup) / batch_size
            memory = peak_memory_mib(device) if device.type == "cuda" else _peak_rss_mib()
            rows.append((str(device), precision, batch_size, milliseconds, 1000.0 / milliseconds, memory))

    memory_label = "peak MiB (CUDA allocated)" if device.type == "cuda" else "peak RSS MiB (process)"
    print_table(
        f"StyleGAN2 config-f {args.resolution}px, {architecture.num_ws}x{architecture.w_dim} W+, "
        f"{parameter_count:,} parameters (random weights), repeats={args.repeats}",
        ("device", "precision", "batch", "ms / image", "images / s", memory_label),
        rows,
    )
    return 0


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
