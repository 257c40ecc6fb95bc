"""Stage 1: find the faces in a photo, their 68 landmarks, and cut the FFHQ-aligned crop.

The crop follows the recipe NVIDIA published with FFHQ (ffhq-dataset, `recreate_aligned_images`):
an oriented square ("quad") from the eye centres and mouth corners; shrink when the face is much
larger than the output; crop with a border; reflect-pad with a blurred, median-blended border where
the quad leaves the photo; resample the quad at 4x the output size; downsample to the output size.
Every step keeps pixel geometry exact, so the quad alone describes where each crop pixel came from
and `worker.pipeline.compose.paste_back` can invert it.

Coordinates are pixel indices: (0, 0) is the centre of the top-left pixel, x to the right, y down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import cv2
import numpy as np

from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError
from worker.models.landmarks import FaceBox, Landmarker

FaceChoice = Literal["largest"] | int

LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT = 48
MOUTH_RIGHT = 54
MIN_EYE_TO_MOUTH_PX = 40.0


@dataclass(frozen=True)
class DetectionConfig:
    """How hard to look for faces, and at what resolution (speed versus the smallest face found)."""

    detect_max_sides: tuple[int, ...] = (1280, 4096)
    """The detector sees the photo resized to each of these longest sides in turn, until a face is found:
    dlib's smallest face is 80 px, so the first pass finds faces down to 80 * side / 1280 px cheaply and
    the later passes are paid only by photos where nothing was found."""
    max_upscale: float = 2.0
    """Small photos are enlarged for detection by at most this factor."""
    upright_min_degrees: float = 0.0
    """Faces whose eye line is tilted more than this get the second, upright landmark pass."""
    upright_passes: int = 2
    """At most this many upright passes per face."""
    upright_frame_px: int = 1024
    """Side of the upright frame (two face boxes wide) the upright pass landmarks in; never enlarged."""
    upright_detect_px: int = 512
    """Longest side the detector sees the upright frame at."""
    jitter_scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    jitter_shifts: tuple[float, ...] = (-0.08, 0.0, 0.08)
    """The upright pass landmarks the face from its box scaled by each of `jitter_scales` and moved down by each
    of `jitter_shifts` (fractions of the box's height), and keeps each point's median. dlib's predictor gives
    visibly different landmarks for boxes a few pixels apart, and the detector's box moves that much with the
    photo's scale and roll. Six seed portraits pasted 78 times (-30..30 degrees, x0.3..1.2): quads up to 4.3% of
    their side from the portrait's own with one box, 0.9% with these nine, for about 20 ms more per face. The
    seventh, 00191, squeezes its eyes shut: the predictor puts them on the lashes or 50 px (at 1024) lower, with
    or without the jitter."""
    jitter_backends: tuple[str, ...] = ("dlib",)
    """Backends whose upright pass uses the jittered boxes: dlib's predictor costs about 1 ms a box, while FAN
    runs its network twice a box."""


@dataclass(frozen=True)
class FaceLandmarks:
    landmarks: np.ndarray
    """68x2 float64 (x, y) in photo pixels."""
    box: FaceBox
    """The detector's rectangle in photo pixels."""

    @property
    def eye_to_mouth_px(self) -> float:
        return float(np.hypot(*_eye_to_mouth(self.landmarks)))

    @property
    def quad_side_px(self) -> float:
        """Side of the FFHQ quad in photo pixels: the face's size as the aligned crop sees it."""
        quad = ffhq_quad(self.landmarks)
        return float(np.hypot(*(quad[3] - quad[0])))


@dataclass(frozen=True)
class AlignmentTransform:
    """Where the aligned crop sits in the photo.

    Aligned pixel (u, v) of an SxS crop is the photo point
    quad[0] + (u + 0.5) / S * (quad[3] - quad[0]) + (v + 0.5) / S * (quad[1] - quad[0]).
    """

    quad: np.ndarray
    """4x2 float64 photo pixels of the crop's outer corners: top-left, bottom-left, bottom-right, top-right."""
    output_size: int
    aligned_to_photo: np.ndarray
    """3x3 float64 homogeneous matrix, aligned pixel (u, v, 1) → photo pixel (x, y, 1)."""
    photo_to_aligned: np.ndarray
    """3x3 float64, its inverse."""

    @classmethod
    def from_quad(cls, quad: np.ndarray, output_size: int) -> AlignmentTransform:
        quad = np.asarray(quad, dtype=np.float64)
        matrix = _unit_square_to_quad(quad, output_size, output_size)
        return cls(quad=quad, output_size=output_size, aligned_to_photo=matrix, photo_to_aligned=np.linalg.inv(matrix))

    def to_photo(self, points_aligned: np.ndarray) -> np.ndarray:
        """Nx2 aligned pixels → Nx2 photo pixels."""
        return apply_matrix(self.aligned_to_photo, points_aligned)

    def to_aligned(self, points_photo: np.ndarray) -> np.ndarray:
        """Nx2 photo pixels → Nx2 aligned pixels."""
        return apply_matrix(self.photo_to_aligned, points_photo)


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray
    """SxSx3 uint8 RGB, the FFHQ-aligned crop."""
    transform: AlignmentTransform


class AlignmentResult(NamedTuple):
    aligned: AlignedFace
    faces_found: int
    chosen_index: int
    """Index of the aligned face among the faces found, counted left to right."""
    landmarks_aligned: np.ndarray
    """68x2 float64, the chosen face's landmarks in aligned-crop pixels."""


def find_and_align(
    photo_rgb: np.ndarray,
    landmarker: Landmarker,
    face_choice: FaceChoice = "largest",
    output_size: int = 1024,
    config: DetectionConfig = DetectionConfig(),
    min_eye_to_mouth_px: float = MIN_EYE_TO_MOUTH_PX,
) -> AlignmentResult:
    """Detect, choose and align one face of an HxWx3 uint8 RGB photo."""
    faces = detect_faces(photo_rgb, landmarker, config)
    chosen = choose_face(faces, face_choice, min_eye_to_mouth_px)
    landmarks = faces[chosen].landmarks
    aligned = align_face(photo_rgb, landmarks, output_size)
    return AlignmentResult(aligned, len(faces), chosen, landmarks_in_aligned(aligned.transform, landmarks))


def detect_faces(
    photo_rgb: np.ndarray, landmarker: Landmarker, config: DetectionConfig = DetectionConfig()
) -> list[FaceLandmarks]:
    """Every face in an HxWx3 uint8 RGB photo with its 68 landmarks in photo pixels, left to right."""
    faces: list[FaceLandmarks] = []
    for max_side in config.detect_max_sides:
        faces = _detect_and_landmark(photo_rgb, landmarker, max_side, config.max_upscale)
        if faces:
            break
    upright = [_landmark_upright(photo_rgb, landmarker, face, config) for face in faces]
    return sorted(upright, key=lambda face: float(face.landmarks[:, 0].mean()))


def choose_face(faces: list[FaceLandmarks], choice: FaceChoice, min_eye_to_mouth_px: float = MIN_EYE_TO_MOUTH_PX) -> int:
    """Index of the face to edit: the largest FFHQ quad, or an index counted left to right."""
    if not faces:
        raise PipelineError(ErrorCode.NO_FACE, "No face was found in the photo.")
    if choice == "largest":
        index = max(range(len(faces)), key=lambda i: faces[i].quad_side_px)
    elif isinstance(choice, int) and 0 <= choice < len(faces):
        index = choice
    else:
        raise PipelineError(
            ErrorCode.FACE_NOT_FOUND,
            f"Face {choice!r} was asked for, but the photo has {len(faces)} face(s): "
            f"use 'largest' or an index from 0 to {len(faces) - 1}, counted left to right.",
        )
    size = faces[index].eye_to_mouth_px
    if size < min_eye_to_mouth_px:
        raise PipelineError(
            ErrorCode.FACE_TOO_SMALL,
            f"The face is too small: {size:.0f} px from eyes to mouth, at least {min_eye_to_mouth_px:.0f} needed.",
        )
    return index


def choose_faces(
    faces: list[FaceLandmarks], choice: FaceChoice | Literal["all"], min_eye_to_mouth_px: float = MIN_EYE_TO_MOUTH_PX
) -> list[tuple[int, str | None]]:
    """(face index, why it is skipped or None) for each face to edit. One face for 'largest' or an index (its
    errors raised as `choose_face` raises them); every face for 'all', a too-small one skipped with its reason."""
    if choice != "all":
        return [(choose_face(faces, choice, min_eye_to_mouth_px), None)]
    if not faces:
        raise PipelineError(ErrorCode.NO_FACE, "No face was found in the photo.")
    chosen = []
    for index, face in enumerate(faces):
        size = face.eye_to_mouth_px
        reason = f"too small: {size:.0f} px from eyes to mouth, at least {min_eye_to_mouth_px:.0f} needed"
        chosen.append((index, reason if size < min_eye_to_mouth_px else None))
    if all(reason is not None for _, reason in chosen):
        raise PipelineError(
            ErrorCode.FACE_TOO_SMALL,
            f"Every face is too small: at least {min_eye_to_mouth_px:.0f} px from eyes to mouth are needed.",
        )
    return chosen


def turned_clockwise(image: np.ndarray, quarter_turns: int) -> np.ndarray:
    """An HxW(xC) image turned clockwise by 90 degrees `quarter_turns` times (negative: counter-clockwise)."""
    return np.ascontiguousarray(np.rot90(image, -quarter_turns)) if quarter_turns % 4 else image


def detect_faces_any_rotation(
    photo_rgb: np.ndarray, landmarker: Landmarker, config: DetectionConfig = DetectionConfig()
) -> tuple[list[FaceLandmarks], int]:
    """The faces of the photo as it is, or else of the photo turned clockwise by 90, 180 or 270 degrees (a photo
    that lost its EXIF orientation): (faces in the turned photo's pixels, quarter turns clockwise)."""
    for quarter_turns in range(4):
        faces = detect_faces(turned_clockwise(photo_rgb, quarter_turns), landmarker, config)
        if faces:
            return faces, quarter_turns
    return [], 0


def ffhq_quad(landmarks68: np.ndarray) -> np.ndarray:
    """4x2 float64: the FFHQ crop square (top-left, bottom-left, bottom-right, top-right) from 68x2 landmarks."""
    eye_left, eye_right = landmarks68[LEFT_EYE].mean(axis=0), landmarks68[RIGHT_EYE].mean(axis=0)
    eye_centre = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = _eye_to_mouth(landmarks68)
    # x points right along the face: the eye line averaged with the eye-to-mouth line turned by 90 degrees.
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y = np.array([-x[1], x[0]])
    centre = eye_centre + eye_to_mouth * 0.1
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y]).astype(np.float64)


def landmarks_in_aligned(transform: AlignmentTransform, landmarks68: np.ndarray) -> np.ndarray:
    """68x2 float64 landmarks in aligned-crop pixels (photo pixels in, through the transform)."""
    return transform.to_aligned(landmarks68)


def align_face(
    photo_rgb: np.ndarray,
    landmarks68: np.ndarray,
    output_size: int = 1024,
    supersample: int = 4,
    enable_padding: bool = True,
) -> AlignedFace:
    """The FFHQ-aligned crop (output_size x output_size x 3 uint8 RGB) of the face with these landmarks.

    `supersample` 4 at output 1024 is the recipe's 4096 transform size.
    """
    quad = ffhq_quad(landmarks68)
    transform = AlignmentTransform.from_quad(quad, output_size)
    quad_side = float(np.hypot(*(quad[3] - quad[0])))

    # Shrink: a face far larger than the output is first box-averaged by an integer factor.
    shrink = math.floor(quad_side / output_size * 0.5)
    shrink = shrink if shrink > 1 else 1
    work_quad = (quad + 0.5) / shrink - 0.5
    work_side = quad_side / shrink
    work_height, work_width = photo_rgb.shape[0] // shrink, photo_rgb.shape[1] // shrink

    # Crop: only the quad's bounding box and a border are ever resampled.
    border = max(round(work_side * 0.1), 3)
    low = np.floor(work_quad.min(axis=0)).astype(int)
    high = np.ceil(work_quad.max(axis=0)).astype(int)
    left, top = max(low[0] - border, 0), max(low[1] - border, 0)
    right, bottom = min(high[0] + border, work_width), min(high[1] + border, work_height)
    region = photo_rgb[top * shrink : bottom * shrink, left * shrink : right * shrink]
    if shrink > 1:
        region = cv2.resize(region, (right - left, bottom - top), interpolation=cv2.INTER_AREA)
    work_quad = work_quad - [left, top]

    # Pad: where the quad leaves the photo, fill with a reflection that fades into blur and the median colour.
    if enable_padding:
        pads = _padding(work_quad, region.shape[1], region.shape[0], border)
        if max(pads) > border - 4:
            pads = np.maximum(pads, round(work_side * 0.3))
            work_quad = work_quad + pads[:2]
            keep_left, keep_top = np.floor(work_quad.min(axis=0)).astype(int) - 1
            keep_right, keep_bottom = np.ceil(work_quad.max(axis=0)).astype(int) + 2
            region = _reflect_pad_blurred(
                region, pads, blur_sigma=work_side * 0.02, keep=(keep_left, keep_top, keep_right, keep_bottom)
            )
            work_quad = work_quad - [keep_left, keep_top]

    transform_size = output_size * supersample
    quad_from_output = _unit_square_to_quad(work_quad, transform_size, transform_size)
    resampled = cv2.warpAffine(
        region,
        quad_from_output[:2],
        (transform_size, transform_size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if supersample > 1:
        # An integer box average keeps pixel centres aligned; at 4:1 it is within 1/255 of the recipe's Lanczos.
        resampled = cv2.resize(resampled, (output_size, output_size), interpolation=cv2.INTER_AREA)
    return AlignedFace(image=resampled, transform=transform)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Nx2 points through a 3x3 homogeneous matrix (affine: the last row is 0, 0, 1)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _eye_to_mouth(landmarks68: np.ndarray) -> np.ndarray:
    eye_centre = (landmarks68[LEFT_EYE].mean(axis=0) + landmarks68[RIGHT_EYE].mean(axis=0)) * 0.5
    mouth_centre = (landmarks68[MOUTH_LEFT] + landmarks68[MOUTH_RIGHT]) * 0.5
    return mouth_centre - eye_centre


def _unit_square_to_quad(quad: np.ndarray, width: int, height: int) -> np.ndarray:
    """3x3 float64: pixel (u, v) of a width x height image → the point of the quad it samples."""
    along_x = (quad[3] - quad[0]) / width
    along_y = (quad[1] - quad[0]) / height
    origin = quad[0] + 0.5 * (along_x + along_y)
    return np.array(
        [[along_x[0], along_y[0], origin[0]], [along_x[1], along_y[1], origin[1]], [0.0, 0.0, 1.0]]
    )


def _padding(quad: np.ndarray, width: int, height: int, border: int) -> np.ndarray:
    """4 int (left, top, right, bottom): how far the quad plus border reaches outside a width x height image."""
    low = np.floor(quad.min(axis=0)).astype(int)
    high = np.ceil(quad.max(axis=0)).astype(int)
    return np.maximum([-low[0] + border, -low[1] + border, high[0] - width + border, high[1] - height + border], 0)


def _reflect_pad_blurred(
    region: np.ndarray, pads: np.ndarray, blur_sigma: float, keep: tuple[int, int, int, int]
) -> np.ndarray:
    """The recipe's padding of an HxWx3 uint8 region, returned only inside `keep` (left, top, right, bottom
    in padded pixels, right/bottom exclusive; the part the quad transform reads).

    The padded image is reflected, blended towards its Gaussian blur near and beyond the photo's edge,
    then towards its median colour beyond it. The blur and the median are computed on a copy reduced k
    times (k = sigma / 4, so the reduced blur still spans 4 px): a large face's blur (sigma 60 px on a
    5000 px padded image) would otherwise take seconds. Measured on the seed portraits (sigma 20, k = 5):
    within 0.5 of 255 of the full-resolution blur inside the photo.
    """
    pad_left, pad_top, pad_right, pad_bottom = (int(p) for p in pads)
    padded = cv2.copyMakeBorder(region, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REFLECT_101)
    height, width = padded.shape[:2]
    k = max(1, int(blur_sigma // 4))
    reduced = _reduce(padded, k)
    reduced_sigma = math.sqrt(max(blur_sigma**2 - (k * k - 1) / 12.0, 0.0)) / k
    radius = int(4.0 * reduced_sigma + 0.5)
    reduced_blur = cv2.GaussianBlur(
        reduced, (2 * radius + 1, 2 * radius + 1), reduced_sigma, sigmaY=reduced_sigma, borderType=cv2.BORDER_REFLECT
    )
    reduced_centres_x = (np.arange(reduced.shape[1], dtype=np.float32) + 0.5) * k - 0.5
    reduced_centres_y = (np.arange(reduced.shape[0], dtype=np.float32) + 0.5) * k - 0.5
    reduced_edge = _pad_edge(reduced_centres_x, reduced_centres_y, width, height, pads)
    reduced_blended = reduced + (reduced_blur - reduced) * np.clip(reduced_edge * 3.0 + 1.0, 0.0, 1.0)[:, :, None]
    median = np.median(reduced_blended, axis=(0, 1)).astype(np.float32)

    keep_left, keep_top, keep_right, keep_bottom = keep
    kept = np.zeros((keep_bottom - keep_top, keep_right - keep_left, 3), np.float32)
    src_left, src_top = max(keep_left, 0), max(keep_top, 0)
    src_right, src_bottom = min(keep_right, width), min(keep_bottom, height)
    kept[src_top - keep_top : src_bottom - keep_top, src_left - keep_left : src_right - keep_left] = padded[
        src_top:src_bottom, src_left:src_right
    ]
    # Full-resolution pixel (x, y) of `kept` sits at reduced pixel ((x + keep_left + 0.5) / k - 0.5, ...).
    kept_to_reduced = np.array([[1.0 / k, 0.0, (keep_left + 0.5) / k - 0.5], [0.0, 1.0 / k, (keep_top + 0.5) / k - 0.5]])
    blur = cv2.warpAffine(
        reduced_blur,
        kept_to_reduced,
        (kept.shape[1], kept.shape[0]),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    edge = _pad_edge(
        np.arange(keep_left, keep_right, dtype=np.float32), np.arange(keep_top, keep_bottom, dtype=np.float32),
        width, height, pads,
    )[:, :, None]
    # In place: these images reach hundreds of megabytes for large faces.
    blur -= kept
    blur *= np.clip(edge * 3.0 + 1.0, 0.0, 1.0)
    kept += blur
    towards_median = np.subtract(median, kept, out=blur)
    towards_median *= np.clip(edge, 0.0, 1.0)
    kept += towards_median
    # Every step mixes values in 0..255 with weights in 0..1, so rounding needs no clipping.
    return np.rint(kept, out=kept).astype(np.uint8)


def _pad_edge(xs: np.ndarray, ys: np.ndarray, width: int, height: int, pads: np.ndarray) -> np.ndarray:
    """len(ys) x len(xs) float32 at padded-image coordinates: 1 on the outer edge, 0 where the photo
    starts, negative inside it."""
    pad_left, pad_top, pad_right, pad_bottom = (float(p) for p in pads)
    edge_x = 1.0 - np.minimum(xs / pad_left, (width - 1 - xs) / pad_right)
    edge_y = 1.0 - np.minimum(ys / pad_top, (height - 1 - ys) / pad_bottom)
    return np.maximum(edge_x[None, :], edge_y[:, None]).astype(np.float32)


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """HxWx3 uint8 → ceil(H/factor) x ceil(W/factor) x 3 float32 box averages (edges reflected to fill)."""
    if factor > 1:
        height, width = image.shape[:2]
        extra_y, extra_x = -height % factor, -width % factor
        image = cv2.copyMakeBorder(image, 0, extra_y, 0, extra_x, cv2.BORDER_REFLECT)
        image = cv2.resize(
            image, ((width + extra_x) // factor, (height + extra_y) // factor), interpolation=cv2.INTER_AREA
        )
    return image.astype(np.float32)


def _detect_and_landmark(
    image_rgb: np.ndarray, landmarker: Landmarker, max_side: int, max_upscale: float
) -> list[FaceLandmarks]:
    """Detect on a copy resized to `max_side`, landmark at the image's own resolution."""
    return [
        FaceLandmarks(landmarks=landmarker.landmarks(image_rgb, box), box=box)
        for box in _detect_resized(image_rgb, landmarker, max_side, max_upscale)
    ]


def _detect_resized(image_rgb: np.ndarray, landmarker: Landmarker, max_side: int, max_upscale: float) -> list[FaceBox]:
    """Faces found on a copy resized to `max_side`, as boxes in the image's own pixels."""
    height, width = image_rgb.shape[:2]
    scale = min(max_side / max(height, width), max_upscale)
    if abs(scale - 1.0) < 1e-3:
        return landmarker.detect(image_rgb)
    small_width, small_height = max(round(width * scale), 1), max(round(height * scale), 1)
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    boxes = landmarker.detect(cv2.resize(image_rgb, (small_width, small_height), interpolation=interpolation))
    return [box.rescaled(width / small_width, height / small_height) for box in boxes]


def _median_landmarks_over_jittered_boxes(
    image_rgb: np.ndarray, landmarker: Landmarker, box: FaceBox, config: DetectionConfig
) -> np.ndarray:
    """68x2 float64: each point's median over the boxes of `DetectionConfig.jitter_scales` x `jitter_shifts`."""
    if landmarker.backend not in config.jitter_backends:
        return landmarker.landmarks(image_rgb, box)
    half_width, half_height = (box.right - box.left) / 2.0, (box.bottom - box.top) / 2.0
    centre_x, centre_y = box.centre
    landmark_sets = [
        landmarker.landmarks(
            image_rgb,
            FaceBox(
                left=centre_x - half_width * scale,
                top=centre_y + shift * 2.0 * half_height - half_height * scale,
                right=centre_x + half_width * scale,
                bottom=centre_y + shift * 2.0 * half_height + half_height * scale,
                score=box.score,
                roll_degrees=box.roll_degrees,
            ),
        )
        for scale in config.jitter_scales
        for shift in config.jitter_shifts
    ]
    return np.median(np.stack(landmark_sets), axis=0)


def _landmark_upright(
    photo_rgb: np.ndarray, landmarker: Landmarker, face: FaceLandmarks, config: DetectionConfig
) -> FaceLandmarks:
    """Landmark a rolled face again in a frame turned so that its eye line is level, mapped back to the photo.

    The detectors and predictors were trained on upright faces and drift on rolled ones. The first roll
    is the detector's guess when it makes one, else the first landmarks' eye line; a pass that finds
    the face still rolled in its frame is followed by another with the corrected roll.
    """
    roll = face.box.roll_degrees or _roll_degrees(face.landmarks)
    landmarks = face.landmarks
    for _ in range(config.upright_passes):
        if abs(roll) < config.upright_min_degrees:
            break
        upright = _landmarks_in_rolled_frame(photo_rgb, landmarker, face.box, roll, config)
        if upright is None:
            break
        landmarks = upright
        residual = _roll_degrees(landmarks) - roll
        roll += residual
        if abs(residual) < config.upright_min_degrees:
            break
    return FaceLandmarks(landmarks=landmarks, box=face.box)


def _landmarks_in_rolled_frame(
    photo_rgb: np.ndarray, landmarker: Landmarker, box: FaceBox, roll_degrees: float, config: DetectionConfig
) -> np.ndarray | None:
    """68x2 photo pixels found in a square frame around `box`, rotated by -roll; None if not found there."""
    side = 2.0 * max(box.right - box.left, box.bottom - box.top)
    frame_px = config.upright_frame_px
    centre = box.centre
    photo_to_frame = np.vstack(
        [cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), roll_degrees, frame_px / side), [0.0, 0.0, 1.0]]
    )
    frame_centre = np.full(2, (frame_px - 1) / 2.0)
    photo_to_frame[:2, 2] += frame_centre - centre
    frame = cv2.warpAffine(
        photo_rgb, photo_to_frame[:2], (frame_px, frame_px), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    boxes = _detect_resized(frame, landmarker, config.upright_detect_px, config.max_upscale)
    if not boxes:
        return None
    nearest = min(boxes, key=lambda candidate: float(np.hypot(*(candidate.centre - frame_centre))))
    # The frame is two face boxes wide: a face centred farther out than half a box is a neighbour.
    if np.hypot(*(nearest.centre - frame_centre)) > frame_px / 4.0:
        return None
    landmarks_in_frame = _median_landmarks_over_jittered_boxes(frame, landmarker, nearest, config)
    return apply_matrix(np.linalg.inv(photo_to_frame), landmarks_in_frame)


def _roll_degrees(landmarks68: np.ndarray) -> float:
    """Eye-line angle in degrees, positive when the eye on the image's right is lower."""
    eye_to_eye = landmarks68[RIGHT_EYE].mean(axis=0) - landmarks68[LEFT_EYE].mean(axis=0)
    return math.degrees(math.atan2(eye_to_eye[1], eye_to_eye[0]))
