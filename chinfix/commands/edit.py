"""`chinfix edit PHOTO -o OUT`: the service's pipeline on one local file, no Redis, with a progress bar."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chinfix.contract import EditOptions, OutputFormat, RefineMethod, ReturnKind


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("edit", help="remove the double chin from one photo file")
    parser.add_argument("photo", type=Path, help="JPEG, PNG or WebP photo")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the edited image")
    parser.add_argument("--refine", choices=[method.value for method in RefineMethod], default="diffuse")
    parser.add_argument("--strength", type=float, default=1.0, help="0..1 (default 1)")
    parser.add_argument("--face", default="largest", help="'largest' or a face index, left to right")
    parser.add_argument("--return", dest="return_kind", choices=[kind.value for kind in ReturnKind], default="photo")
    parser.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    parser.add_argument("--debug-dir", type=Path, help="also write the intermediate images here")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from chinfix.errors import ChinfixError
    from chinfix.imaging import ImageLimits, decode_image, encode_image
    from chinfix.settings import Settings
    from worker.progress import overall_progress
    from worker.registry import ModelRegistry

    output_format = OutputFormat(args.output.suffix.lower().lstrip(".").replace("jpg", "jpeg") or "png")
    options = EditOptions.model_validate(
        {
            "strength": args.strength,
            "refine": args.refine,
            "face": args.face,
            "output": output_format,
            "quality": args.quality,
            "return": args.return_kind,
            "debug": args.debug_dir is not None,
        }
    )
    settings = Settings()
    try:
        photo = decode_image(args.photo.read_bytes(), ImageLimits(settings.max_pixels, settings.min_side))
        registry = ModelRegistry.load(settings)
        with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}", disable=args.json) as bar:

            def progress(stage, fraction) -> None:
                bar.set_description(stage.value)
                bar.update(round(overall_progress(stage, fraction) * 100) - bar.n)

            result = registry.edit_portrait(photo.rgb, options, registry, progress)
    except ChinfixError as error:
        print(json.dumps({"error": {"code": error.code, "message": error.message}}))
        return 2
    args.output.write_bytes(encode_image(result.image, output_format, args.quality))
    if args.debug_dir is not None:
        args.debug_dir.mkdir(parents=True, exist_ok=True)
        for name, image in result.debug_images.items():
            (args.debug_dir / f"{name}.png").write_bytes(encode_image(image, OutputFormat.PNG))
    print(json.dumps(result.report, indent=None if args.json else 2))
    return 0
