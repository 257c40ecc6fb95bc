"""`chinfix bench identity`: the identity check's speed, and the similarities CHINFIX_MIN_IDENTITY was chosen from.

Rows: the seed's reference face against each stage of the method (`reference/synthetic_001645_*`), every pair of
different seed portraits, and each seed portrait against crude neck changes of itself (everything below the jaw
blurred; the rows below the jaw moved up by 3% of the side). Each row gives the cosine similarity of dlib's face
descriptors (both cut with the first image's landmarks, as the quality check does) and the median ms of one
descriptor. dlib runs on the CPU whatever --device says.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worker.bench import SEED_PORTRAITS

REFERENCE_STAGES = ("res", "diffuse", "simple", "wo_doublechin")
JAW_LANDMARK = 4
"""iBUG 68: a point on the lower jaw, level with the mouth; everything below it is neck or chin."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--portraits", type=Path, default=SEED_PORTRAITS, help="folder of the seed portraits")


def neck_changes(image: np.ndarray, landmarks: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Crude edits of an HxWx3 uint8 RGB photo below the jaw, none of which changes who it is."""
    import cv2

    jaw_row = int(landmarks[JAW_LANDMARK, 1])
    blurred = image.copy()
    blurred[jaw_row:] = cv2.GaussianBlur(image, (0, 0), 12)[jaw_row:]
    yield "below the jaw blurred", blurred
    shift = int(0.03 * image.shape[0])
    lifted = image.copy()
    lifted[jaw_row:-shift] = image[jaw_row + shift :]
    yield "below the jaw moved up 3%", lifted


def run(args: argparse.Namespace) -> int:
    import time

    from chinfix.imaging import ImageLimits, decode_image
    from model_store.store import ModelStore
    from worker.bench.timing import print_table
    from worker.models.face_identity import load_face_describer
    from worker.models.landmarks import load_dlib_landmarker
    from worker.pipeline.quality import identity_similarity
    from worker.registry import FACE_RECOGNITION

    describer = load_face_describer(ModelStore().path(FACE_RECOGNITION))
    landmarker = load_dlib_landmarker()

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = decode_image(path.read_bytes(), ImageLimits(max_pixels=10**9, min_side=1)).rgb
        return image, landmarker.landmarks(image, landmarker.detect(image)[0])

    def row(what: str, first: tuple[np.ndarray, np.ndarray], second: np.ndarray) -> list[object]:
        started = time.perf_counter()
        similarity = identity_similarity(describer, first[0], second, first[1])
        return [what, f"{similarity:.4f}", f"{(time.perf_counter() - started) * 500.0:.0f}"]

    rows = []
    reference = args.portraits.parent / "reference"
    if (reference / "synthetic_001645_w_doublechin.jpg").is_file():
        original = read(reference / "synthetic_001645_w_doublechin.jpg")
        for stage in REFERENCE_STAGES:
            edited, _ = read(reference / f"synthetic_001645_{stage}.jpg")
            rows.append(row(f"reference input vs {stage}", original, edited))
    portraits = {path.stem: read(path) for path in sorted(args.portraits.glob("*.jpg"))}
    for (name_a, a), (name_b, b) in itertools.combinations(portraits.items(), 2):
        rows.append(row(f"{name_a} vs {name_b} (different people)", a, b[0]))
    for name, portrait in portraits.items():
        for change, changed in neck_changes(*portrait):
            rows.append(row(f"{name} vs {change}", portrait, changed))
    print_table("identity similarity (cosine of dlib face descriptors)", ["pair", "similarity", "ms per descriptor"], rows)
    return 0
