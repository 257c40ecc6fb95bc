"""`chinfix align PHOTO -o CROP`: stage 1 alone on one file (detect, landmark, cut the FFHQ crop), for debugging."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

from chinfix.commands.arguments import face_choice, image_output_path, output_format_of, print_error_body
from chinfix.settings import Settings

QUAD_CORNERS = ("top-left", "bottom-left", "bottom-right", "top-right")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("align", help="cut the FFHQ-aligned crop of one face from a photo file")
    parser.add_argument("photo", type=Path, help="JPEG, PNG or WebP photo (EXIF orientation is applied)")
    parser.add_argument(
        "-o", "--output", type=image_output_path, required=True, help="where to write the crop: .png, .jpg or .webp"
    )
    parser.add_argument("--face", type=face_choice, default="largest", help="'largest' or a face index, left to right")
    parser.add_argument("--size", type=_positive_int, default=1024, help="side of the aligned crop in pixels")
    parser.add_argument("--json", action="store_true", help='print one JSON object: {"faces", "chosen", "quad"}')
    parser.add_argument(
        "--backend",
        choices=get_args(Settings.model_fields["landmark_backend"].annotation),
        help="landmark model (default: the landmark_backend setting, CHINFIX_LANDMARK_BACKEND)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from chinfix.contract import ErrorCode
    from chinfix.errors import ChinfixError
    from chinfix.imaging import ImageLimits, decode_image, encode_image
    from model_store.store import ModelStore
    from worker.models.landmarks import load_landmarker
    from worker.pipeline.align import find_and_align

    settings = Settings()
    backend = args.backend or settings.landmark_backend
    try:
        photo = decode_image(args.photo.read_bytes(), ImageLimits(settings.max_pixels, settings.min_side))
        landmarker = load_landmarker(backend, ModelStore(settings.model_dir), _landmark_device(backend, settings))
        found = find_and_align(photo.rgb, landmarker, args.face, output_size=args.size)
    except ChinfixError as error:
        return print_error_body(error.code, error.message)
    except OSError as error:
        return print_error_body(ErrorCode.IMAGE_UNREADABLE, f"cannot read {args.photo}: {error.strerror or error}")
    args.output.write_bytes(encode_image(found.aligned.image, output_format_of(args.output)))

    quad = [[round(float(x), 2), round(float(y), 2)] for x, y in found.aligned.transform.quad]
    if args.json:
        print(json.dumps({"faces": found.faces_found, "chosen": found.chosen_index, "quad": quad}))
        return 0
    print(f"faces found: {found.faces_found}; aligned face {found.chosen_index} (counted left to right, {backend})")
    print("crop corners in photo pixels:")
    for corner, (x, y) in zip(QUAD_CORNERS, quad, strict=True):
        print(f"  {corner:<12} x={x:.2f} y={y:.2f}")
    print(f"{args.size}x{args.size} crop written to {args.output}")
    return 0


def _landmark_device(backend: str, settings: Settings) -> str:
    """FAN runs on the configured torch device; dlib is CPU-only, and resolving 'auto' would import torch."""
    if backend != "fan":
        return "cpu"
    from worker.registry import resolve_device

    return str(resolve_device(settings.device))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels, not {text}")
    return value
