"""dlib's face-recognition ResNet: a 128-d descriptor of who a face is, for the identity check of an edit.

The network (`dlib_face_recognition_resnet_model_v1.dat`, shipped in the `face_recognition_models` pip
package) maps a face chip, cut with the face's landmarks to 150x150, to a descriptor; two photos of the same
person lie within Euclidean distance 0.6 (dlib's published threshold, 99.38% on LFW).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class FaceDescriber:
    """Descriptors of faces in HxWx3 uint8 RGB images, given their 68 landmarks."""

    def __init__(self, network: Any) -> None:
        self._network = network

    def descriptor(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """128 float64: the descriptor of the face whose 68x2 (x, y) landmarks are given, in the image's pixels."""
        import dlib

        points = [dlib.point(round(x), round(y)) for x, y in landmarks]
        left, top = np.floor(landmarks.min(axis=0)).astype(int)
        right, bottom = np.ceil(landmarks.max(axis=0)).astype(int)
        shape = dlib.full_object_detection(dlib.rectangle(int(left), int(top), int(right), int(bottom)), points)
        return np.array(self._network.compute_face_descriptor(np.ascontiguousarray(image_rgb), shape))


def load_face_describer(path: Path) -> FaceDescriber:
    import dlib

    if not Path(path).is_file():
        raise FileNotFoundError(f"no dlib face-recognition model at {path}")
    return FaceDescriber(dlib.face_recognition_model_v1(str(path)))


def cosine_similarity(descriptor_a: np.ndarray, descriptor_b: np.ndarray) -> float:
    return float(descriptor_a @ descriptor_b / (np.linalg.norm(descriptor_a) * np.linalg.norm(descriptor_b)))
