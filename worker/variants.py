"""A job's inversion kept for its variants: what align and invert found, as bytes for Redis (no pickle)."""

from __future__ import annotations

import io
import json

import numpy as np

from worker.pipeline.portrait import InvertedFace, PortraitInversion


def inversion_to_bytes(inversion: PortraitInversion) -> bytes:
    arrays = {}
    for position, face in enumerate(inversion.faces):
        arrays[f"landmarks_{position}"] = face.landmarks
        arrays[f"wp_{position}"] = face.wp
    header = {
        "quarter_turns": inversion.quarter_turns,
        "faces_found": inversion.faces_found,
        "faces": [{"index": face.index, "report": face.report} for face in inversion.faces],
        "skipped_faces": inversion.skipped_faces,
    }
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    return buffer.getvalue()


def inversion_from_bytes(data: bytes) -> PortraitInversion:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        header = json.loads(arrays["header"].tobytes())
        faces = [
            InvertedFace(
                index=face["index"],
                landmarks=arrays[f"landmarks_{position}"],
                wp=arrays[f"wp_{position}"],
                report=face["report"],
            )
            for position, face in enumerate(header["faces"])
        ]
    return PortraitInversion(header["quarter_turns"], header["faces_found"], faces, header["skipped_faces"])
