"""`chinfix edit PHOTO -o OUT`: the service's pipeline on one local file, no Redis, with a progress bar."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chinfix.commands.arguments import face_choice, image_output_path, output_format_of, print_error_body
from chinfix.contract import EditOptions, ErrorCode, OutputFormat, RefineMethod, ReturnKind


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("edit", help="remove the double chin from one photo file")
    parser.add_argument("photo", type=Path, help="JPEG, PNG or WebP photo")
    parser.add_argument(
        "-o", "--output", type=image_output_path, required=True, help="where to write the edited image: .jpg, .png or .webp"
    )
    parser.add_argument("--refine", choices=[method.value for method in RefineMethod], default="diffuse")
    parser.add_argument("--strength", type=float, default=1.0, help="0..1 (default 1)")
    parser.add_argument("--face", type=face_choice, default="largest", help="'largest' or a face index, left to right")
    parser.add_argument("--return", dest="return_kind", choices=[kind.value for kind in ReturnKind], default="photo")
    parser.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    parser.add_argument("--debug-dir", type=Path, help="also write the intermediate images here")
    parser.add_argument(
        "--code", type=Path, help="the face's latent code (.npy, 1 x num_ws x w_dim or 1 x w_dim): skips the inversion"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from tqdm import tqdm

    from chinfix.codes import read_code
    from chinfix.errors import ChinfixError, describe_validation_errors
    from chinfix.imaging import ImageLimits, decode_image, encode_image
    from chinfix.settings import Settings
    from worker.progress import overall_progress
    from worker.registry import ConfigurationError, ModelRegistry

    output_format = output_format_of(args.output)
    try:
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
    except ValidationError as error:
        return print_error_body(ErrorCode.INVALID_OPTIONS, describe_validation_errors(error.errors()))
    settings = Settings()
    try:
        code = {"code": read_code(args.code.read_bytes())} if args.code is not None else {}
    except OSError as error:
        return print_error_body(ErrorCode.INVALID_CODE, f"cannot read {args.code}: {error.strerror or error}")
    except ChinfixError as error:
        return print_error_body(error.code, error.message)
    try:
        photo = decode_image(args.photo.read_bytes(), ImageLimits(settings.max_pixels, settings.min_side))
        registry = ModelRegistry.load(settings)
        with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}", disable=args.json) as bar:

            def progress(stage, fraction) -> None:
                bar.set_description(stage.value)
                bar.update(round(overall_progress(stage, fraction) * 100) - bar.n)

            result = registry.edit_portrait(photo.rgb, options, registry, progress, **code)
    except ChinfixError as error:
        return print_error_body(error.code, error.message)
    except ConfigurationError as error:
        return print_error_body(ErrorCode.MODEL_MISSING, str(error))
    except OSError as error:
        return print_error_body(ErrorCode.IMAGE_UNREADABLE, f"cannot read {args.photo}: {error.strerror or error}")
    args.output.write_bytes(encode_image(result.image, output_format, args.quality))
    if args.debug_dir is not None:
        args.debug_dir.mkdir(parents=True, exist_ok=True)
        for name, image in result.debug_images.items():
            (args.debug_dir / f"{name}.png").write_bytes(encode_image(image, OutputFormat.PNG))
    print(json.dumps(result.report, indent=None if args.json else 2))
    return 0
