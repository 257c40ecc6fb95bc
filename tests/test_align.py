"""Stage 1 on real photos with the dlib backend: detection, face choice, FFHQ quads with a known answer."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError
from chinfix.imaging import ImageLimits, decode_image
from tests.align_fixtures import (
    busy_background,
    dlib_landmarker,
    noise_landscape,
    paste_transformed,
    portrait_in_busy_scene,
    seed_portrait,
    seed_portrait_paths,
)
from tests.service_inputs import jpeg_with_orientation
from worker.pipeline.align import AlignmentResult, apply_matrix, detect_faces, find_and_align

SEED_NAMES = [path.stem for path in seed_portrait_paths()]
FULL_FRAME_QUAD = np.array([[-0.5, -0.5], [-0.5, 1023.5], [1023.5, 1023.5], [1023.5, -0.5]])
"""4x2 float64: the outer corners of a 1024 crop that is the whole portrait (AlignmentTransform's convention)."""

SCENE_TRANSFORMS = [
    pytest.param(-30.0, 0.3, (1000.0, 900.0), id="-30deg-x0.3"),
    pytest.param(30.0, 1.2, (1700.0, 1000.0), id="+30deg-x1.2"),
    pytest.param(0.0, 0.6, (2200.0, 1100.0), id="0deg-x0.6"),
    pytest.param(15.0, 0.45, (900.0, 1300.0), id="+15deg-x0.45"),
    pytest.param(-15.0, 0.9, (1500.0, 1000.0), id="-15deg-x0.9"),
]
"""(rotation in degrees, scale, centre in scene pixels) of a seed portrait pasted into a 3000x2000 scene."""

QUAD_TOLERANCE = 0.02
"""Largest corner distance between the quad found in a scene and the known answer, as a fraction of its side."""
SQUINTING_QUAD_TOLERANCE = {"00191": 0.12}
"""00191's eyes are squeezed shut: dlib's predictor puts them on the lash line (eye y about 443 at 1024) or on
the puffy lower lid (about 500), and the detector's own box for this face sits on the boundary between the two,
so neighbouring boxes flip the answer and its quad has two places up to 10% of the side apart (13 pastes
measured). The portrait's own alignment lands on the lower answer, 22 px from its frame; every variant tried
that moved the pastes onto one answer (frames from stable lower-face points, wider jitter, mean instead of
median) moved the portrait itself 45-117 px from its frame."""

DECODE_LIMITS = ImageLimits(max_pixels=40_000_000, min_side=64)


@functools.cache
def portrait_alignment(name: str) -> AlignmentResult:
    return find_and_align(seed_portrait(name), dlib_landmarker())


def quad_error_fraction(found: np.ndarray, expected: np.ndarray) -> float:
    """Largest distance between corresponding corners of two 4x2 quads, over the expected quad's side."""
    side = float(np.hypot(*(expected[3] - expected[0])))
    return float(np.hypot(*(found - expected).T).max()) / side


@pytest.mark.parametrize("name", SEED_NAMES)
def test_aligned_portrait_realigns_to_its_own_frame(name: str) -> None:
    result = portrait_alignment(name)
    corner_distances = np.hypot(*(result.aligned.transform.quad - FULL_FRAME_QUAD).T)
    assert corner_distances.max() < 30.0, f"{name}: quad corners {corner_distances.round(1)} px from the frame's"
    assert result.aligned.image.shape == (1024, 1024, 3) and result.aligned.image.dtype == np.uint8


@pytest.mark.parametrize("angle_degrees, scale, centre", SCENE_TRANSFORMS)
@pytest.mark.parametrize("name", SEED_NAMES)
def test_quad_in_a_scene_is_the_portrait_quad_moved_by_the_known_transform(
    name: str, angle_degrees: float, scale: float, centre: tuple[float, float]
) -> None:
    scene, portrait_to_scene = portrait_in_busy_scene(name, angle_degrees, scale, centre)
    found = find_and_align(scene, dlib_landmarker()).aligned.transform.quad
    expected = apply_matrix(portrait_to_scene, portrait_alignment(name).aligned.transform.quad)
    error = quad_error_fraction(found, expected)
    assert error <= SQUINTING_QUAD_TOLERANCE.get(name, QUAD_TOLERANCE), f"{name}: corner off by {error:.2%} of the side"


@functools.cache
def two_face_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2400x1400 scene with 00212 small on the left and 00295 larger on the right, and their two 3x3
    portrait-to-scene transforms (left, right)."""
    scene = busy_background(1400, 2400, seed=5)
    left = paste_transformed(scene, seed_portrait("00212"), 5.0, 0.5, (600.0, 700.0))
    right = paste_transformed(scene, seed_portrait("00295"), -5.0, 0.8, (1750.0, 700.0))
    return scene, left, right


@pytest.mark.parametrize(
    "face_choice, portrait, chosen",
    [("largest", "00295", 1), (0, "00212", 0), (1, "00295", 1)],
)
def test_two_faces_largest_and_index_choose_the_right_one(face_choice: str | int, portrait: str, chosen: int) -> None:
    scene, left, right = two_face_scene()
    result = find_and_align(scene, dlib_landmarker(), face_choice)
    assert result.faces_found == 2
    assert result.chosen_index == chosen
    expected = apply_matrix([left, right][chosen], portrait_alignment(portrait).aligned.transform.quad)
    assert quad_error_fraction(result.aligned.transform.quad, expected) <= QUAD_TOLERANCE


@pytest.mark.parametrize("face_choice", [2, -1])
def test_face_index_out_of_range_is_face_not_found(face_choice: int) -> None:
    scene, _, _ = two_face_scene()
    with pytest.raises(PipelineError) as raised:
        find_and_align(scene, dlib_landmarker(), face_choice)
    assert raised.value.code == ErrorCode.FACE_NOT_FOUND
    assert "2 face(s)" in raised.value.message


def test_landscape_without_a_face_is_no_face() -> None:
    with pytest.raises(PipelineError) as raised:
        find_and_align(noise_landscape(1200, 1800, seed=2), dlib_landmarker())
    assert raised.value.code == ErrorCode.NO_FACE


def test_tiny_face_is_found_but_too_small() -> None:
    scene = noise_landscape(480, 640, seed=3)
    paste_transformed(scene, seed_portrait("00657"), 0.0, 0.13, (320.0, 240.0))
    faces = detect_faces(scene, dlib_landmarker())
    assert len(faces) == 1 and 20.0 < faces[0].eye_to_mouth_px < 40.0
    with pytest.raises(PipelineError) as raised:
        find_and_align(scene, dlib_landmarker())
    assert raised.value.code == ErrorCode.FACE_TOO_SMALL
    accepted = find_and_align(scene, dlib_landmarker(), min_eye_to_mouth_px=20.0)
    assert accepted.faces_found == 1


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_portrait_aligns_like_the_upright_one(orientation: int) -> None:
    upright = seed_portrait("00295")
    decoded = decode_image(jpeg_with_orientation(upright, orientation), DECODE_LIMITS).rgb
    assert np.abs(decoded.astype(np.int16) - upright).mean() < 3.0, "decode_image did not turn the photo upright"
    found = find_and_align(decoded, dlib_landmarker()).aligned.transform.quad
    corner_distances = np.hypot(*(found - portrait_alignment("00295").aligned.transform.quad).T)
    # JPEG re-encoding alone moves dlib's landmarks enough to shift the quad's corners by about 3 px.
    assert corner_distances.max() < 6.0, f"corners {corner_distances.round(1)} px from the upright portrait's"
