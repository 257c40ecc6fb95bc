"""`chinfix align` on a seed portrait and on a photo without a face."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from chinfix.cli import main
from chinfix.imaging import ImageLimits, decode_image
from tests.align_fixtures import dlib_landmarker, noise_landscape
from tests.seed_data import SEED_DATA
from worker.pipeline.align import AlignmentResult, find_and_align

PORTRAIT = SEED_DATA / "portraits" / "00212.jpg"


@pytest.fixture(autouse=True)
def default_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dlib default, and an empty model store: nothing the developer pulled changes what the tests see."""
    monkeypatch.delenv("CHINFIX_LANDMARK_BACKEND", raising=False)
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(tmp_path / "empty-store"))


@functools.cache
def expected_alignment(size: int) -> AlignmentResult:
    photo = decode_image(PORTRAIT.read_bytes(), ImageLimits(max_pixels=40_000_000, min_side=64)).rgb
    return find_and_align(photo, dlib_landmarker(), output_size=size)


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_json_prints_exactly_faces_chosen_and_quad_and_writes_the_crop(tmp_path: Path, capsys) -> None:
    crop_path = tmp_path / "crop.png"
    assert main(["align", str(PORTRAIT), "-o", str(crop_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"faces", "chosen", "quad"}
    assert printed["faces"] == 1 and printed["chosen"] == 0
    expected = expected_alignment(1024)
    np.testing.assert_allclose(printed["quad"], expected.aligned.transform.quad, atol=0.006)
    np.testing.assert_array_equal(read_rgb(crop_path), expected.aligned.image)


def test_readable_report_names_faces_and_corners_and_honours_size_and_face(tmp_path: Path, capsys) -> None:
    crop_path = tmp_path / "crop.png"
    assert main(["align", str(PORTRAIT), "-o", str(crop_path), "--size", "256", "--face", "0"]) == 0
    printed = capsys.readouterr().out
    assert "faces found: 1" in printed
    quad = expected_alignment(256).aligned.transform.quad
    for corner, (x, y) in zip(("top-left", "bottom-left", "bottom-right", "top-right"), quad, strict=True):
        assert f"{corner:<12} x={x:.2f} y={y:.2f}" in printed
    np.testing.assert_array_equal(read_rgb(crop_path), expected_alignment(256).aligned.image)


def error_printed(capsys) -> dict[str, str]:
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"error"} and set(printed["error"]) == {"code", "message"}
    return printed["error"]


def test_photo_without_a_face_is_a_json_error_and_exit_2(tmp_path: Path, capsys) -> None:
    landscape_path, crop_path = tmp_path / "landscape.png", tmp_path / "crop.png"
    cv2.imwrite(str(landscape_path), cv2.cvtColor(noise_landscape(600, 900, seed=4), cv2.COLOR_RGB2BGR))
    assert main(["align", str(landscape_path), "-o", str(crop_path), "--json"]) == 2
    assert error_printed(capsys)["code"] == "no_face"
    assert not crop_path.exists()


def test_a_photo_that_is_not_there_is_a_json_error(tmp_path: Path, capsys) -> None:
    assert main(["align", str(tmp_path / "absent.jpg"), "-o", str(tmp_path / "crop.png")]) == 2
    error = error_printed(capsys)
    assert error["code"] == "image_unreadable" and "absent.jpg" in error["message"]


def test_face_index_beyond_the_faces_found_is_face_not_found(tmp_path: Path, capsys) -> None:
    assert main(["align", str(PORTRAIT), "-o", str(tmp_path / "crop.png"), "--face", "1"]) == 2
    error = error_printed(capsys)
    assert error["code"] == "face_not_found" and "1 face(s)" in error["message"]


def test_fan_backend_without_its_weights_is_model_missing(tmp_path: Path, capsys) -> None:
    assert main(["align", str(PORTRAIT), "-o", str(tmp_path / "crop.png"), "--backend", "fan"]) == 2
    error = error_printed(capsys)
    assert error["code"] == "model_missing" and "chinfix models pull fan_landmarks" in error["message"]


@pytest.mark.parametrize(
    "option, value, complaint",
    [("--face", "biggest", "expected 'largest'"), ("--size", "0", "positive"), ("-o", "crop.bmp", ".png")],
)
def test_bad_option_values_are_refused_before_any_work(
    tmp_path: Path, capsys, option: str, value: str, complaint: str
) -> None:
    argv = ["align", str(PORTRAIT), "-o", str(tmp_path / "crop.png"), option, value]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
