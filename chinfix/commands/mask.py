"""`chinfix mask CROP.png -o mask.png`: the neck mask stage alone on an aligned crop, for debugging and training."""

from __future__ import annotations

import argparse
from pathlib import Path

from chinfix.commands.arguments import print_error_body


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("mask", help="the neck mask of an FFHQ-aligned face crop")
    parser.add_argument("crop", type=Path, help="aligned face crop (JPEG, PNG or WebP), e.g. from `chinfix align`")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the mask (.png): uint8, 255 = neck")
    parser.add_argument("--soft", action="store_true", help="write the soft mask (dilated and blurred, 255 on the neck)")
    parser.add_argument(
        "--parser",
        type=Path,
        help="face-parsing weights (79999_iter.pth); default: face_parsing_bisenet from the store, the landmark fallback without it",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from chinfix.contract import ErrorCode, OutputFormat
    from chinfix.errors import ChinfixError
    from chinfix.imaging import ImageLimits, decode_image, encode_image
    from chinfix.settings import Settings
    from model_store.store import ModelStore
    from worker.models.landmarks import load_landmarker
    from worker.pipeline.align import choose_face, detect_faces
    from worker.pipeline.masks import neck_masks

    if args.output.suffix.lower() != ".png":
        return print_error_body(ErrorCode.INVALID_OPTIONS, f"the mask is written as PNG: {args.output} must end in .png")
    settings = Settings()
    store = ModelStore(settings.model_dir)
    try:
        crop = decode_image(args.crop.read_bytes(), ImageLimits(settings.max_pixels, settings.min_side)).rgb
        if crop.shape[0] != crop.shape[1]:
            return print_error_body(
                ErrorCode.INVALID_OPTIONS, f"{args.crop} is {crop.shape[1]}x{crop.shape[0]}: an aligned crop is square"
            )
        faces = detect_faces(crop, load_landmarker(settings.landmark_backend, store))
        landmarks = faces[choose_face(faces, "largest")].landmarks
        parser_path = args.parser or (store.path("face_parsing_bisenet") if store.is_present("face_parsing_bisenet") else None)
        parser = None if parser_path is None else _load_parser(parser_path)
    except ChinfixError as error:
        return print_error_body(error.code, error.message)
    except OSError as error:
        return print_error_body(ErrorCode.IMAGE_UNREADABLE, f"cannot read {args.crop}: {error.strerror or error}")
    masks = neck_masks(crop, landmarks, parser)
    mask = np.rint(masks.soft_mask * 255) if args.soft else masks.neck_mask * 255
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(encode_image(mask.astype(np.uint8), OutputFormat.PNG))
    print(f"{'soft ' if args.soft else ''}neck mask from {masks.source.value} ({int(masks.neck_mask.sum())} px) written to {args.output}")
    return 0


def _load_parser(path: Path):
    """The BiSeNet at `path`; an unreadable file is model_missing with the loader's reason."""
    import pickle

    from chinfix.contract import ErrorCode
    from chinfix.errors import PipelineError
    from worker.models.bisenet import load_bisenet

    try:
        return load_bisenet(path)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise PipelineError(ErrorCode.MODEL_MISSING, f"cannot load the face parser {path}: {reason}") from None
