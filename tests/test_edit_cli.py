"""`chinfix edit-code` on a seed portrait's W+ code with the published fine boundary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chinfix.cli import main
from worker.pipeline.edit import EditConfig, load_fine_boundary, remove_double_chin

SEED_DATA = Path(__file__).resolve().parents[2] / "shared" / "seed-data"
BOUNDARY = SEED_DATA / "boundaries/fine/double_chin_wp.npy"
INTERCEPT = SEED_DATA / "boundaries/fine/double_chin_wp_intercept.npy"
CODE = SEED_DATA / "latents/00191_wp.npy"

pytestmark = pytest.mark.skipif(not SEED_DATA.is_dir(), reason=f"seed data not found at {SEED_DATA}")


@pytest.fixture(autouse=True)
def empty_model_store(tmp_path, monkeypatch):
    for name in ("MODEL_DIR", "EDIT_MARGIN", "NO_CHIN_THRESHOLD", "FIXED_ALPHA"):
        monkeypatch.delenv(f"CHINFIX_{name}", raising=False)
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(tmp_path / "empty-store"))


def _edit_code(tmp_path, *extra: str) -> tuple[int, Path]:
    output = tmp_path / "edited.npy"
    argv = ["edit-code", str(CODE), "--strength", "1", "-o", str(output), "--boundary", str(BOUNDARY), "--intercept", str(INTERCEPT)]
    return main([*argv, *extra]), output


def test_json_output_is_exactly_the_four_facts(tmp_path, capsys):
    status, output = _edit_code(tmp_path, "--json")
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"score_before", "score_after", "alpha", "skipped"}
    expected = remove_double_chin(np.load(CODE), load_fine_boundary(BOUNDARY, INTERCEPT), EditConfig())
    assert printed["score_before"] == pytest.approx(expected.score_before)
    assert printed["score_after"] == pytest.approx(expected.score_after)
    assert printed["alpha"] == pytest.approx(expected.alpha)
    assert printed["skipped"] is False and printed["score_after"] < 0 < printed["score_before"]
    np.testing.assert_array_equal(np.load(output), expected.wp)


def test_fixed_alpha_and_threshold_options(tmp_path, capsys):
    status, _ = _edit_code(tmp_path, "--fixed-alpha", "-5", "--json")
    assert status == 0 and json.loads(capsys.readouterr().out)["alpha"] == -5.0
    status, output = _edit_code(tmp_path, "--threshold", "100", "--json")
    printed = json.loads(capsys.readouterr().out)
    assert status == 0 and printed["skipped"] is True and printed["alpha"] == 0.0
    np.testing.assert_array_equal(np.load(output), np.load(CODE))


def test_pose_conditioning_uses_the_given_yaw_boundary(tmp_path, capsys):
    yaw = SEED_DATA / "boundaries/coarse/pose_yaw_w_psi0.5.npy"
    status, output = _edit_code(tmp_path, "--pose-boundary", str(yaw), "--json")
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    moved = np.load(output)[0, :7].astype(np.float64) - np.load(CODE)[0, :7]
    np.testing.assert_allclose(moved @ np.load(yaw).reshape(-1).astype(np.float64), 0.0, atol=1e-4)
    assert printed["score_after"] == pytest.approx(-1.0, abs=1e-4)


def test_missing_boundary_names_the_model_to_pull(tmp_path, capsys):
    status = main(["edit-code", str(CODE), "-o", str(tmp_path / "edited.npy")])
    assert status == 2
    assert "chinfix models pull fine_boundary" in capsys.readouterr().err
