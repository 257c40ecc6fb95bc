"""face-alignment's FAN backend: its two published files load through our loader and answer the Landmarker questions.

Random weights in the published formats (a plain FAN state dict, as face-alignment 1.5 reads 2D-FAN-4's, and
S3FD's); the points are meaningless, so only their shape, placement and plumbing are checked. One hourglass
instead of the published four keeps the test fast on a CPU: the loader reads the count from the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chinfix.errors import PipelineError
from model_store.store import ModelStore
from tests.align_fixtures import seed_portrait
from worker.models.landmarks import (
    FAN_FACE_DETECTOR,
    FAN_LANDMARKS,
    FaceBox,
    FanLandmarker,
    fan_hourglass_count,
    heatmap_peaks_in_image,
    load_landmarker,
)


@pytest.fixture(scope="module")
def fan_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    store = ModelStore(tmp_path_factory.mktemp("fan-models"))
    torch.manual_seed(0)
    torch.save(FAN(1).state_dict(), store.path(FAN_LANDMARKS))
    torch.save(s3fd().state_dict(), store.path(FAN_FACE_DETECTOR))
    return store


def test_fan_loads_from_the_store_and_gives_68_points_in_the_box(fan_store: ModelStore) -> None:
    landmarker = load_landmarker("fan", fan_store, "cpu")
    assert isinstance(landmarker, FanLandmarker) and landmarker.backend == "fan"
    photo = seed_portrait("00191")
    box = FaceBox(left=300.0, top=350.0, right=720.0, bottom=800.0, score=1.0)
    points = landmarker.landmarks(photo, box)
    assert points.shape == (68, 2) and points.dtype == np.float64 and np.isfinite(points).all()
    # FAN samples a 256px crop around the box (scaled by its size): every point lies in that crop.
    reach = (box.right - box.left + box.bottom - box.top) * 0.6
    assert (np.abs(points - box.centre) < reach).all()
    assert all(isinstance(face, FaceBox) for face in landmarker.detect(photo[::8, ::8]))


def test_missing_fan_weights_are_model_missing(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as raised:
        load_landmarker("fan", ModelStore(tmp_path), "cpu")
    assert raised.value.code == "model_missing" and f"chinfix models pull {FAN_LANDMARKS}" in raised.value.message


def test_hourglass_count_is_read_from_the_file() -> None:
    from face_alignment.models import FAN

    assert fan_hourglass_count(FAN(4).state_dict()) == 4
    with pytest.raises(PipelineError, match="not a FAN state dict"):
        fan_hourglass_count({"conv1.weight": torch.zeros(1)})


def test_heatmap_peaks_map_to_cell_centres_in_the_image() -> None:
    rng = np.random.default_rng(0)
    cells = rng.integers(2, 62, size=(68, 2))
    heatmaps = np.zeros((68, 64, 64), np.float32)
    heatmaps[np.arange(68), cells[:, 1], cells[:, 0]] = 1.0
    heatmaps[0, cells[0, 1], cells[0, 0] + 1] = 0.5  # a stronger right neighbour: a quarter cell to the right
    centre, side = np.array([500.0, 400.0]), 320.0
    points = heatmap_peaks_in_image(heatmaps, centre, side)
    expected = centre + ((cells + 0.5) / 64 - 0.5) * side
    expected[0, 0] += 0.25 * side / 64
    assert np.allclose(points, expected)
