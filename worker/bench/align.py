"""`chinfix bench align`: stage 1 speed (face detection, 68 landmarks, FFHQ crop) per landmark backend.

Two photos: a large one (default 4000x3000, 12 megapixels: a seed portrait scaled to a phone portrait's face size,
pasted left of centre over smooth faceless colour) and the seed portrait itself (1024x1024, already aligned).
Each row gives median ms over --repeats of `detect_faces` (detection, landmarks and the upright passes),
`align_face` (the crop, from landmarks) and `find_and_align` (all of it). dlib runs on the CPU whatever --device
says; FAN runs on --device. A backend whose weights are absent gets a line saying so instead of rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from worker.bench import SEED_PORTRAITS

if TYPE_CHECKING:
    import numpy as np


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--portrait", type=Path, default=SEED_PORTRAITS / "00295.jpg",
        help="the face to find: a portrait photo (default: seed portrait 00295)",
    )  # fmt: skip
    parser.add_argument("--photo-size", default="4000x3000", help="WIDTHxHEIGHT of the large photo")
    parser.add_argument(
        "--face-scale", type=float, default=0.8,
        help="the portrait's scale in the large photo (its FFHQ quad is then about this x 1024 px)",
    )  # fmt: skip
    parser.add_argument("--crop-size", type=int, default=1024, help="side of the aligned crop")
    parser.add_argument("--backends", default="dlib,fan", help="comma-separated landmark backends")


def run(args: argparse.Namespace) -> int:
    import os

    import cv2

    from chinfix.errors import ChinfixError
    from chinfix.imaging import ImageLimits, decode_image
    from chinfix.settings import Settings
    from model_store.store import ModelStore
    from worker.bench.timing import median_ms, print_table
    from worker.models.landmarks import load_landmarker
    from worker.pipeline.align import align_face, choose_face, detect_faces, find_and_align
    from worker.registry import LANDMARK_MODELS, resolve_device

    backends = [name.strip() for name in args.backends.split(",")]
    unknown = sorted(set(backends) - set(LANDMARK_MODELS))
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}; expected some of {', '.join(LANDMARK_MODELS)}")
    if not args.portrait.is_file():
        raise SystemExit(f"no portrait at {args.portrait}: pass --portrait")
    width, height = (int(side) for side in args.photo_size.lower().split("x"))
    device = resolve_device(args.device)
    portrait = decode_image(args.portrait.read_bytes(), ImageLimits(max_pixels=10**9, min_side=1)).rgb
    photos = {
        f"{width}x{height} photo": portrait_in_large_photo(portrait, width, height, args.face_scale),
        f"{portrait.shape[1]}x{portrait.shape[0]} portrait": portrait,
    }

    store = ModelStore(Settings().model_dir)
    rows, skipped = [], []
    for backend in backends:
        missing = store.missing(LANDMARK_MODELS[backend])
        if missing:
            skipped.append(
                f"{backend}: skipped, {' and '.join(missing)} not in {store.root} "
                f"(chinfix models pull {' '.join(missing)})"
            )
            continue
        try:
            landmarker = load_landmarker(backend, store, str(device))
        except ChinfixError as error:
            skipped.append(f"{backend}: skipped, {error.message}")
            continue
        for label, photo in photos.items():
            faces = detect_faces(photo, landmarker)
            try:
                landmarks = faces[choose_face(faces, "largest")].landmarks
            except ChinfixError as error:
                raise SystemExit(f"{backend} on the {label}: {error.message}") from None
            detect = median_ms(lambda: detect_faces(photo, landmarker), device, args.repeats)
            crop = median_ms(lambda: align_face(photo, landmarks, args.crop_size), device, args.repeats)
            total = median_ms(
                lambda: find_and_align(photo, landmarker, output_size=args.crop_size), device, args.repeats
            )
            rows.append((backend, "cpu" if backend == "dlib" else str(device), label, len(faces), detect, crop, total))

    print_table(
        f"align: median ms of {args.repeats}, {args.crop_size}px crop, {os.cpu_count()} CPU cores, "
        f"{cv2.getNumThreads()} OpenCV threads; {args.portrait.name} at x{args.face_scale:g} in the large photo",
        ("backend", "device", "input", "faces", "detect + landmarks", "align crop", "total"),
        rows,
    )
    for line in skipped:
        print(line)
    return 0


def portrait_in_large_photo(portrait_rgb: np.ndarray, width: int, height: int, face_scale: float) -> np.ndarray:
    """HxWx3 uint8 RGB: the portrait (SxSx3 uint8 RGB) scaled by `face_scale`, left of centre, over smooth random
    colour (out-of-focus surroundings with no face in them for the detector to find)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(max(height // 64, 2), max(width // 64, 2), 3), dtype=np.uint8)
    photo = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    side = round(portrait_rgb.shape[0] * face_scale)
    if side > min(width, height):
        raise SystemExit(f"a portrait scaled by {face_scale} ({side} px) does not fit a {width}x{height} photo")
    left, top = (width - side) // 3, (height - side) // 2
    photo[top : top + side, left : left + side] = cv2.resize(portrait_rgb, (side, side), interpolation=cv2.INTER_AREA)
    return photo
