"""`chinfix mask` on a seed portrait, with no parser weights (the landmark fallback) and with a parser file."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from chinfix.cli import main
from tests.parsing_fixtures import save_random_bisenet
from tests.seed_data import SEED_DATA, needs_seed_data
from worker.pipeline.masks import soft_neck_mask

PORTRAIT = SEED_DATA / "portraits/00212.jpg"

pytestmark = needs_seed_data


@pytest.fixture(autouse=True)
def empty_model_store(tmp_path, monkeypatch):
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(tmp_path / "empty-store"))
    monkeypatch.delenv("CHINFIX_LANDMARK_BACKEND", raising=False)


def _read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_hard_and_soft_masks_of_a_seed_portrait_without_parser_weights(tmp_path, capsys):
    hard_path, soft_path = tmp_path / "mask.png", tmp_path / "soft.png"
    assert main(["mask", str(PORTRAIT), "-o", str(hard_path)]) == 0
    assert "from landmarks" in capsys.readouterr().out
    assert main(["mask", str(PORTRAIT), "-o", str(soft_path), "--soft"]) == 0
    hard, soft = _read(hard_path), _read(soft_path)
    assert hard.shape == soft.shape == (1024, 1024) and hard.dtype == soft.dtype == np.uint8
    assert set(np.unique(hard)) == {0, 255} and (hard == 255).mean() > 0.02
    expected = np.rint(soft_neck_mask(hard == 255) * 255).astype(np.uint8)
    np.testing.assert_array_equal(soft, expected)
    assert np.all(soft[hard == 255] == 255) and (soft > 0).sum() > (hard > 0).sum()


def test_a_given_parser_file_is_used(tmp_path, capsys):
    parser = save_random_bisenet(tmp_path / "parser.pth")
    status = main(["mask", str(PORTRAIT), "-o", str(tmp_path / "mask.png"), "--parser", str(parser)])
    out = capsys.readouterr().out
    # random weights may find no neck, and then the fallback answers: either way the file was read
    assert status == 0 and ("from parsing" in out or "from landmarks" in out)


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        (["MISSING", "-o", "OUT.png"], "image_unreadable"),
        (["PORTRAIT", "-o", "OUT.jpg"], "invalid_options"),
        (["PORTRAIT", "-o", "OUT.png", "--parser", "README"], "model_missing"),
    ],
)
def test_bad_input_is_one_json_line_and_exit_2(tmp_path, capsys, arguments, code):
    names = {
        "MISSING": str(tmp_path / "missing.png"),
        "PORTRAIT": str(PORTRAIT),
        "OUT.png": str(tmp_path / "out.png"),
        "OUT.jpg": str(tmp_path / "out.jpg"),
        "README": str(SEED_DATA / "README.md"),
    }
    assert main(["mask", *(names.get(item, item) for item in arguments)]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["error"]["code"] == code
