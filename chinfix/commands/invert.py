"""`chinfix invert CROP.png -o code.npy`: NVIDIA's projector on one aligned face crop."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from chinfix.settings import Settings

PRESET_NAMES = get_args(Settings.model_fields["invert_preset"].annotation)
SPACE_NAMES = get_args(Settings.model_fields["invert_space"].annotation)
PROGRESS_EVERY = 25


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("invert", help="find the latent code of an aligned face crop (.npy)")
    parser.add_argument("crop", type=Path, help="aligned face crop (PNG/JPEG), resized to the generator's resolution")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the 1 x num_ws x w_dim float32 code")
    parser.add_argument("--generator", type=Path, help="generator checkpoint (default: stylegan2_ffhq from the model store)")
    parser.add_argument("--vgg16", type=Path, help="torchvision VGG16 state dict (default: vgg16_imagenet from the store)")
    parser.add_argument("--lpips-lin", type=Path, help="LPIPS v0.1 vgg.pth linear layers (default: lpips_vgg_lin from the store)")
    parser.add_argument("--preset", choices=PRESET_NAMES, help="schedule: fast 250, quality 500, paper 1000 steps (default: CHINFIX_INVERT_PRESET)")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps (default: CHINFIX_INVERT_STEPS)")
    parser.add_argument("--space", choices=SPACE_NAMES, help="w: the projector's (rows identical); wplus: one w per layer (default: CHINFIX_INVERT_SPACE)")
    parser.add_argument("--seed", type=int, help="seed of the initial noise maps and the exploration noise (default 303, the projector's)")
    parser.add_argument("--init", type=Path, help="start from this 1 x num_ws x w_dim code instead of w_avg")
    parser.add_argument("--reconstruction", type=Path, help="also save the generated image of the code (with its optimised noise) here")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: the service's setting")
    parser.add_argument("--json", action="store_true", help='print one line {"space", "steps", "final_loss"}')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from chinfix.errors import ChinfixError
    from model_store.store import ModelStore
    from worker.models.checkpoints import load_generator
    from worker.models.lpips import load_lpips_vgg
    from worker.pipeline.invert import (
        INVERSION_PRESETS,
        loop_precision,
        noise_tensors,
        project,
        rgb_from_images,
        targets_from_rgb,
    )
    from worker.registry import generator_precision, resolve_device

    settings = Settings()
    steps = args.steps if args.steps is not None else settings.invert_steps
    if steps is not None and steps < 1:
        return _error(f"--steps must be at least 1, not {steps}")
    config = dataclasses.replace(INVERSION_PRESETS[args.preset or settings.invert_preset], space=args.space or settings.invert_space)
    config = dataclasses.replace(config, steps=steps or config.steps, seed=config.seed if args.seed is None else args.seed)
    config = dataclasses.replace(config, precision=loop_precision(settings.precision), capture=settings.capture)
    try:
        crop = Image.open(args.crop).convert("RGB")
    except OSError as error:
        return _error(f"cannot read the crop {args.crop}: {error}")
    try:
        init_wp = np.load(args.init, allow_pickle=False) if args.init else None
    except (OSError, ValueError) as error:
        return _error(f"cannot read the starting code {args.init}: {error}")

    store = ModelStore(settings.model_dir)
    device = resolve_device(args.device or settings.device)
    fp16_resolutions, channels_last = generator_precision(settings.precision, device)
    try:
        G = load_generator(
            args.generator or store.require("stylegan2_ffhq"), device,
            fp16_resolutions=fp16_resolutions, channels_last=channels_last,
        )  # fmt: skip
        perceptual_loss = load_lpips_vgg(
            args.vgg16 or store.require("vgg16_imagenet"), args.lpips_lin or store.require("lpips_vgg_lin"), device
        )
    except ChinfixError as error:
        return _error(error.message)
    except (OSError, ValueError, RuntimeError) as error:
        return _error(f"cannot load a model: {error}")

    if crop.size != (G.img_resolution, G.img_resolution):
        print(f"resizing {crop.size[0]}x{crop.size[1]} crop to {G.img_resolution}px", file=sys.stderr)
        crop = crop.resize((G.img_resolution, G.img_resolution), Image.Resampling.LANCZOS)

    def report(step: int, total: int, losses: torch.Tensor) -> None:
        if step == 1 or step % PROGRESS_EVERY == 0 or step == total:
            print(f"step {step:>4}/{total}  loss {float(losses[0]):.4f}", file=sys.stderr)

    try:
        result = project(
            G, targets_from_rgb([np.asarray(crop)], device), perceptual_loss, config, progress=report, init_wp=init_wp
        )
    except ValueError as error:
        return _error(str(error))
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("wb") as file:
            np.save(file, result.wp[:1])
    except OSError as error:
        return _error(f"cannot write {args.output}: {error}")
    final_loss = float(result.final_losses[0])
    if args.json:
        print(json.dumps({"space": config.space, "steps": config.steps, "final_loss": final_loss}))
    else:
        print(f"wrote the {config.space} code to {args.output} after {config.steps} steps, final loss {final_loss:.4f}")
    if args.reconstruction:
        with torch.no_grad():
            image = G.synthesis(torch.from_numpy(result.wp).to(device), noise=noise_tensors(result.noise, device))
        Image.fromarray(rgb_from_images(image)[0]).save(args.reconstruction)
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
