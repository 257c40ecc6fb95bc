"""`chinfix bench pairs`: seconds per training pair (coarse edit + diffuse) at full FFHQ config-f size, and what
the seed's 14,788 pairs would take on 1 and on 8 devices (shards are independent, so workers add up).

The real `make_pair` with a StyleGAN2 config-f generator and the seed's perceptual VGG16 of random weights (speed does not depend
on them). The region is a fixed band under the face instead of the parser + landmarks (`fixed_neck_band` below):
finding the neck is not timed. `--whole measured` runs all `--diffuse-steps` steps; `extrapolated` times the pair at
two short step counts and extends the line to the full count; `auto` measures on CUDA and extrapolates on CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SEED_PAIRS = 14_788
"""How many pairs the seed made for its published fine boundary."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=1024, help="generator resolution (config-f channel rule)")
    parser.add_argument("--diffuse-steps", type=int, default=100, help="the seed's step 2: 100")
    parser.add_argument("--whole", choices=("auto", "measured", "extrapolated"), default="auto")
    parser.add_argument("--sample-steps", default="2,4", help="the two step counts timed to extrapolate from")


def fixed_neck_band(image_rgb: np.ndarray, registry: object) -> np.ndarray:
    """SxS bool: rows 70..95% of the image, columns 30..70% (where an aligned face's neck is)."""
    side = image_rgb.shape[0]
    region = np.zeros(image_rgb.shape[:2], bool)
    region[int(0.70 * side) : int(0.95 * side), int(0.30 * side) : int(0.70 * side)] = True
    return region


def run(args: argparse.Namespace) -> int:
    import torch

    from chinfix.settings import Settings
    from worker.bench.timing import print_table, synchronize
    from worker.models.stylegan2 import Generator, GeneratorArchitecture
    from worker.models.vgg16 import SeedPerceptualVGG16
    from worker.registry import ModelRegistry, resolve_device
    from worker.training.pairs import PairConfig, make_pair

    device = resolve_device(args.device)
    torch.manual_seed(0)
    generator = Generator(GeneratorArchitecture.from_channel_rule(args.resolution)).eval().requires_grad_(False)
    generator = generator.to(device)
    registry = ModelRegistry(settings=Settings(), device=device, store=None, edit_portrait=None,
                             generator=generator,
                             diffuse_perceptual=SeedPerceptualVGG16().eval().requires_grad_(False).to(device))  # fmt: skip
    wp = generator.mapping(torch.randn([1, generator.z_dim], device=device), truncation_psi=0.8).cpu().numpy()
    normal = np.random.default_rng(0).standard_normal(generator.w_dim).astype(np.float32)
    normal /= np.linalg.norm(normal)

    def seconds_per_pair(steps: int) -> float:
        config = PairConfig(diffuse_steps=steps)
        times = []
        for _ in range(args.repeats):
            synchronize(device)
            start = time.perf_counter()
            make_pair(registry, wp, normal, config, fixed_neck_band)
            synchronize(device)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    measured = args.whole == "measured" or (args.whole == "auto" and device.type == "cuda")
    seconds_per_pair(1)  # warm-up
    if measured:
        seconds, how = seconds_per_pair(args.diffuse_steps), "measured"
    else:
        low, high = (int(steps) for steps in args.sample_steps.split(","))
        at_low, at_high = seconds_per_pair(low), seconds_per_pair(high)
        per_step = (at_high - at_low) / (high - low)
        seconds = at_low + (args.diffuse_steps - low) * per_step
        how = f"extrapolated from {low} and {high} steps ({per_step:.2f} s/step)"
    hours = seconds * SEED_PAIRS / 3600.0
    print_table(
        f"training pairs: StyleGAN2 config-f {args.resolution}px + the seed's VGG16 (random weights), "
        f"{args.diffuse_steps} diffuse steps, repeats={args.repeats}",
        ("device", "s / pair", "how", f"h for {SEED_PAIRS:,} pairs, 1 device", "h, 8 devices"),
        [(str(device), seconds, how, hours, hours / 8)],
    )
    return 0
