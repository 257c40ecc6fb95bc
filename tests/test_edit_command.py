"""`chinfix edit` on a seed portrait with a store of tiny random-weight models, and with an empty store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chinfix.cli import main
from chinfix.contract import DEBUG_IMAGE_NAMES, Stage
from model_store.store import ModelStore
from tests.service_harness import PORTRAITS
from tests.test_pipeline_service import (
    FEW_STEPS,
    REQUIRED_MODELS,
    assert_changed_only_inside_footprint,
    input_rgb,
    pasted_footprint,
)
from tests.tiny_models import TINY_RESOLUTION, build_tiny_model_store

pytestmark = pytest.mark.skipif(not PORTRAITS, reason="the seed portraits are not beside the checkout")


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model store the command reads (CHINFIX_MODEL_DIR), on the CPU, with few optimisation steps."""
    directory = tmp_path / "models"
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(directory))
    monkeypatch.setenv("CHINFIX_DEVICE", "cpu")
    for name, value in FEW_STEPS.items():
        monkeypatch.setenv(name, value)
    return directory


def test_edit_writes_the_photo_the_debug_images_and_the_report(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_tiny_model_store(model_dir, with_parser=False)
    photo, output, debug_dir = PORTRAITS[0], tmp_path / "edited.png", tmp_path / "debug"
    status = main(["edit", str(photo), "-o", str(output), "--refine", "warp", "--debug-dir", str(debug_dir), "--json"])
    printed = capsys.readouterr().out
    assert status == 0, printed

    report = json.loads(printed)
    assert report["refine"] == "warp" and report["faces_found"] == 1 and report["mask_source"] == "landmarks"
    assert set(report["timings_ms"]) == {stage.value for stage in Stage}
    assert report["alpha"] < 0 and report["score_after"] < 0 < report["score_before"]

    debug_images = {path.stem: np.asarray(Image.open(path)) for path in debug_dir.glob("*.png")}
    assert set(debug_images) == set(DEBUG_IMAGE_NAMES)
    crop_side = (TINY_RESOLUTION, TINY_RESOLUTION)
    assert all(image.shape[:2] == crop_side for image in debug_images.values())

    original = input_rgb(photo)
    with Image.open(output) as written:
        assert written.format == "PNG"
        edited = np.asarray(written.convert("RGB"))
    footprint = pasted_footprint(report["quad"], debug_images["soft_mask"], original.shape)
    assert_changed_only_inside_footprint(original, edited, footprint)


def test_edit_with_an_empty_store_prints_model_missing_and_exits_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "edited.png"
    status = main(["edit", str(PORTRAITS[0]), "-o", str(output), "--json"])
    assert status == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "model_missing"
    missing = ModelStore(model_dir).missing(REQUIRED_MODELS)
    assert f"chinfix models pull {' '.join(missing)}" in error["message"]
    assert not output.exists()


@pytest.mark.parametrize(
    ("arguments", "code", "words"),
    [
        (["{photo}", "-o", "{out}.png", "--strength", "2"], "invalid_options", "strength"),
        (["{missing}", "-o", "{out}.png"], "image_unreadable", "cannot read"),
    ],
    ids=["strength", "missing-photo"],
)
def test_edit_refuses_bad_arguments_with_an_error_body(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], code: str, words: str
) -> None:
    values = {"photo": str(PORTRAITS[0]), "out": str(tmp_path / "edited"), "missing": str(tmp_path / "absent.jpg")}
    status = main(["edit", *(argument.format(**values) for argument in arguments)])
    assert status == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == code and words in error["message"]


def test_edit_refuses_an_output_it_cannot_encode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["edit", str(PORTRAITS[0]), "-o", str(tmp_path / "edited.tif")])
    assert exited.value.code == 2 and ".jpg" in capsys.readouterr().err
