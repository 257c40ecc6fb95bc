"""The inversion a job keeps for its variants survives the trip through bytes: code, landmarks and noise maps."""

from __future__ import annotations

import numpy as np

from worker.pipeline.portrait import InvertedFace, PortraitInversion
from worker.variants import inversion_from_bytes, inversion_to_bytes


def test_codes_and_noise_maps_round_trip() -> None:
    rng = np.random.default_rng(0)
    projected = InvertedFace(
        index=1,
        landmarks=rng.normal(size=(68, 2)),
        wp=rng.normal(size=(1, 8, 16)).astype(np.float32),
        noise={name: rng.normal(size=(1, 1, side, side)).astype(np.float32) for name, side in (("b4.conv1", 4), ("b8.conv0", 8))},
        report={"index": 1, "code": "inverted"},
    )
    given = InvertedFace(index=0, landmarks=rng.normal(size=(68, 2)), wp=projected.wp * 2, noise=None, report={"index": 0})
    skipped = [{"index": 2, "skipped": True, "reason": "face_too_small"}]
    restored = inversion_from_bytes(inversion_to_bytes(PortraitInversion(3, 3, [projected, given], skipped)))

    assert (restored.quarter_turns, restored.faces_found, restored.skipped_faces) == (3, 3, skipped)
    first, second = restored.faces
    assert first.index == 1 and first.report == projected.report
    np.testing.assert_array_equal(first.wp, projected.wp)
    np.testing.assert_array_equal(first.landmarks, projected.landmarks)
    assert list(first.noise) == list(projected.noise), "the layer order is kept"
    for name, maps in projected.noise.items():
        np.testing.assert_array_equal(first.noise[name], maps)
    assert second.noise is None, "a given code has no maps: the generator's constant noise"
    np.testing.assert_array_equal(second.wp, given.wp)
