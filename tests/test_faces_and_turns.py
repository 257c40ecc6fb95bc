"""Every face and sideways photos, stage by stage: overlapping pastes, the turn bookkeeping, the face choice."""

from __future__ import annotations

import numpy as np
import pytest

from chinfix.errors import PipelineError
from tests.test_compose import lower_face_mask, scene_alignment
from worker.models.landmarks import FaceBox
from worker.pipeline.align import FaceLandmarks, choose_faces, turned_clockwise
from worker.pipeline.compose import FacePaste, paste_back, paste_back_faces, warp_mask_to_photo
from worker.pipeline.portrait import points_before_turn


def test_two_overlapping_pastes_share_their_weight() -> None:
    scene, found = scene_alignment("00212", 20.0, 0.7)
    transform = found.aligned.transform
    mask, _ = lower_face_mask(found.landmarks_aligned)
    dark, light = found.aligned.image // 2, 255 - (255 - found.aligned.image) // 2
    pasted, weights = paste_back_faces(scene, [FacePaste(transform, dark, mask), FacePaste(transform, light, mask)])

    single = warp_mask_to_photo(transform, mask, scene.shape)
    # Weights add up where their sum stays under 1 and are scaled to sum to 1 where it would pass it.
    assert np.allclose(weights, np.minimum(2.0 * single, 1.0), atol=1e-5)
    full = single >= 0.999
    dark_only = paste_back(scene, transform, dark, np.ones_like(mask))
    light_only = paste_back(scene, transform, light, np.ones_like(mask))
    expected = np.rint(dark_only[full] / 2.0 + light_only[full] / 2.0)
    assert np.abs(pasted[full].astype(int) - expected.astype(int)).max() <= 1, "fully masked: the mean of both"
    assert np.array_equal(pasted[weights == 0], scene[weights == 0])


def test_one_paste_is_paste_back() -> None:
    scene, found = scene_alignment("00212", 20.0, 0.7)
    mask, _ = lower_face_mask(found.landmarks_aligned)
    crop = 255 - found.aligned.image
    pasted, weights = paste_back_faces(scene, [FacePaste(found.aligned.transform, crop, mask)])
    assert np.array_equal(pasted, paste_back(scene, found.aligned.transform, crop, mask))
    assert np.array_equal(weights, warp_mask_to_photo(found.aligned.transform, mask, scene.shape))


@pytest.mark.parametrize("quarter_turns", [0, 1, 2, 3])
def test_points_found_in_a_turned_photo_map_back(quarter_turns: int) -> None:
    photo = np.zeros((40, 70), np.uint8)
    photo[7, 52] = 255  # pixel (x=52, y=7), centre (52.5, 7.5)
    turned = turned_clockwise(photo, quarter_turns)
    row, col = np.argwhere(turned == 255)[0]
    back = points_before_turn(np.array([[col + 0.5, row + 0.5]]), quarter_turns, turned.shape)
    assert np.allclose(back, [[52.5, 7.5]])
    assert np.array_equal(turned_clockwise(turned, -quarter_turns), photo)


def face_of_size(left: float, eye_to_mouth: float) -> FaceLandmarks:
    landmarks = np.zeros((68, 2))
    landmarks[:, 0] = left
    landmarks[36:48, 1] = 100.0  # eyes
    landmarks[48:68, 1] = 100.0 + eye_to_mouth  # mouth
    return FaceLandmarks(landmarks=landmarks, box=FaceBox(left, 80, left + 50, 200, score=1.0))


def test_all_faces_skips_the_small_ones_with_their_reason() -> None:
    faces = [face_of_size(0, 80), face_of_size(300, 12), face_of_size(600, 60)]
    chosen = choose_faces(faces, "all")
    assert [index for index, _ in chosen] == [0, 1, 2]
    assert chosen[0][1] is None and chosen[2][1] is None and "too small: 12 px" in chosen[1][1]
    with pytest.raises(PipelineError) as every_face_too_small:
        choose_faces([face_of_size(0, 10), face_of_size(300, 12)], "all")
    assert every_face_too_small.value.code == "face_too_small"
    with pytest.raises(PipelineError) as none:
        choose_faces([], "all")
    assert none.value.code == "no_face"
    assert choose_faces(faces, "largest") == [(0, None)]
