"""A job's inversion kept for its variants: what align and invert found, as bytes for Redis (no pickle).

Each face keeps its code and, when the projector found it, the noise maps optimised with it: a variant
synthesises with the same maps, so its unedited pixels match the first job's reconstruction."""

from __future__ import annotations

import io
import json

import numpy as np

from worker.pipeline.portrait import InvertedFace, PortraitInversion


def inversion_to_bytes(inversion: PortraitInversion) -> bytes:
    arrays = {}
    faces = []
    for position, face in enumerate(inversion.faces):
        arrays[f"landmarks_{position}"] = face.landmarks
        arrays[f"wp_{position}"] = face.wp
        noise_layers = None if face.noise is None else list(face.noise)
        for layer, name in enumerate(noise_layers or []):
            arrays[f"noise_{position}_{layer}"] = face.noise[name]
        faces.append({"index": face.index, "report": face.report, "noise_layers": noise_layers})
    header = {
        "quarter_turns": inversion.quarter_turns,
        "faces_found": inversion.faces_found,
        "faces": faces,
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
                noise=noise_of_face(arrays, position, face.get("noise_layers")),
                report=face["report"],
            )
            for position, face in enumerate(header["faces"])
        ]
    return PortraitInversion(header["quarter_turns"], header["faces_found"], faces, header["skipped_faces"])


def noise_of_face(arrays: np.lib.npyio.NpzFile, position: int, layers: list[str] | None) -> dict[str, np.ndarray] | None:
    """The stored noise maps of face `position` by layer name, or None when its code was given (no maps)."""
    if layers is None:
        return None
    return {name: arrays[f"noise_{position}_{layer}"] for layer, name in enumerate(layers)}
