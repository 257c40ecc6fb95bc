"""`chinfix invert CROP.png -o code.npy`: find the W+ code of one aligned face crop."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRESET_NAMES = ("fast", "quality", "paper")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("invert", help="invert an aligned face crop to a W+ code (.npy)")
    parser.add_argument("crop", type=Path, help="aligned face crop (PNG/JPEG), resized to the generator's resolution")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the 1 x num_ws x w_dim float32 code")
    parser.add_argument("--generator", type=Path, help="generator checkpoint (default: stylegan2_ffhq from the model store)")
    parser.add_argument("--vgg16", type=Path, help="torchvision VGG16 state dict (default: vgg16_imagenet from the store)")
    parser.add_argument("--lpips-lin", type=Path, help="LPIPS v0.1 vgg.pth linear layers (default: lpips_vgg_lin from the store)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None, help="schedule (default: the service's, fast)")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--init", type=Path, help="start from this 1 x num_ws x w_dim code instead of w_avg")
    parser.add_argument("--reconstruction", type=Path, help="also save the generated image of the code here")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: the service's setting")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from chinfix.errors import ChinfixError
    from chinfix.settings import Settings
    from model_store.store import ModelStore
    from worker.models.checkpoints import load_generator
    from worker.models.lpips import load_lpips_vgg
    from worker.pipeline.invert import INVERSION_PRESETS, invert_wplus, rgb_from_images, targets_from_rgb
    from worker.registry import resolve_device

    settings = Settings()
    store = ModelStore(settings.model_dir)
    device = resolve_device(args.device or settings.device)
    config = INVERSION_PRESETS[args.preset or settings.invert_preset]
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
    fp16_resolutions = 4 if settings.precision == "fp16" and device.type == "cuda" else 0
    try:
        G = load_generator(args.generator or store.require("stylegan2_ffhq"), device, fp16_resolutions=fp16_resolutions)
        perceptual_loss = load_lpips_vgg(
            args.vgg16 or store.require("vgg16_imagenet"), args.lpips_lin or store.require("lpips_vgg_lin"), device
        )
    except ChinfixError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: cannot load a model: {error}", file=sys.stderr)
        return 2

    try:
        crop = Image.open(args.crop).convert("RGB")
    except OSError as error:
        print(f"error: cannot read {args.crop}: {error}", file=sys.stderr)
        return 2
    if crop.size != (G.img_resolution, G.img_resolution):
        print(f"resizing {crop.size[0]}x{crop.size[1]} crop to {G.img_resolution}px", file=sys.stderr)
        crop = crop.resize((G.img_resolution, G.img_resolution), Image.Resampling.LANCZOS)
    init_wp = np.load(args.init, allow_pickle=False) if args.init else None

    def report(step: int, total: int, losses: np.ndarray) -> None:
        if step == 1 or step % 25 == 0 or step == total:
            print(f"step {step:>4}/{total}  loss {losses[0]:.4f}", file=sys.stderr)

    result = invert_wplus(
        G, targets_from_rgb([np.asarray(crop)], device), perceptual_loss, config, progress=report, init_wp=init_wp
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, result.wp[:1])
    stop = "plateau" if result.stopped_early[0] else "schedule end"
    print(f"wrote {args.output} after {result.steps_run[0]} steps ({stop}), final loss {result.losses[0, result.steps_run[0] - 1]:.4f}")
    if args.reconstruction:
        with torch.no_grad():
            image = G.synthesis(torch.from_numpy(result.wp).to(device), noise_mode="const")
        Image.fromarray(rgb_from_images(image)[0]).save(args.reconstruction)
    return 0
