"""`chinfix edit-code` on a seed portrait's W+ code with the published fine boundary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chinfix.cli import main
from tests.seed_data import COARSE_BOUNDARY, SEED_DATA, YAW_BOUNDARY, needs_seed_data
from tests.seed_data import FINE_BOUNDARY as BOUNDARY
from tests.seed_data import FINE_INTERCEPT as INTERCEPT
from worker.pipeline.edit import SEED_ALPHA, EditConfig, coarse_edit, load_fine_boundary, remove_double_chin

CODE = SEED_DATA / "latents/00191_wp.npy"

pytestmark = needs_seed_data


@pytest.fixture(autouse=True)
def empty_model_store(tmp_path, monkeypatch):
    for name in ("MODEL_DIR", "EDIT_MARGIN", "NO_CHIN_THRESHOLD", "FIXED_ALPHA", "CONDITION_POSE"):
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
    yaw = YAW_BOUNDARY
    status, output = _edit_code(tmp_path, "--pose-boundary", str(yaw), "--json")
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    moved = np.load(output)[0, :7].astype(np.float64) - np.load(CODE)[0, :7]
    np.testing.assert_allclose(moved @ np.load(yaw).reshape(-1).astype(np.float64), 0.0, atol=1e-4)
    assert printed["score_after"] == pytest.approx(-EditConfig().margin, abs=1e-4)


def test_missing_boundary_names_the_model_to_pull(tmp_path, capsys):
    status = main(["edit-code", str(CODE), "-o", str(tmp_path / "edited.npy")])
    assert status == 2
    assert "chinfix models pull fine_boundary" in capsys.readouterr().err


def _alpha_of(tmp_path, capsys, code: Path, *extra: str) -> float:
    output = tmp_path / "edited.npy"
    argv = ["edit-code", str(code), "-o", str(output), "--boundary", str(BOUNDARY), "--intercept", str(INTERCEPT), "--json"]
    assert main([*argv, *extra]) == 0
    return json.loads(capsys.readouterr().out)["alpha"]


def test_default_settings_give_the_seeds_mean_alpha_over_its_codes(tmp_path, capsys):
    alphas = [_alpha_of(tmp_path, capsys, code) for code in sorted((SEED_DATA / "latents").glob("*_wp.npy"))]
    assert len(alphas) == 7 and np.mean(alphas) == pytest.approx(SEED_ALPHA, abs=0.25)


def test_settings_reach_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CHINFIX_FIXED_ALPHA", "-5")
    assert _alpha_of(tmp_path, capsys, CODE) == -5.0
    monkeypatch.delenv("CHINFIX_FIXED_ALPHA")
    monkeypatch.setenv("CHINFIX_CONDITION_POSE", "true")
    assert main(["edit-code", str(CODE), "-o", str(tmp_path / "e.npy"), "--boundary", str(BOUNDARY), "--intercept", str(INTERCEPT)]) == 2
    assert "chinfix models pull pose_yaw_boundary" in capsys.readouterr().err


def test_fixed_alpha_needs_no_intercepts(tmp_path, capsys):
    psi05 = SEED_DATA / "boundaries/fine/double_chin_wp_psi0.5.npy"
    output = tmp_path / "edited.npy"
    assert main(["edit-code", str(CODE), "-o", str(output), "--boundary", str(psi05), "--fixed-alpha", "-5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"score_before": None, "score_after": None, "alpha": -5.0, "skipped": False}
    expected = remove_double_chin(np.load(CODE), load_fine_boundary(psi05), EditConfig(fixed_alpha=-5.0)).wp
    np.testing.assert_array_equal(np.load(output), expected)


def test_a_w_boundary_is_the_seeds_coarse_edit(tmp_path, capsys):
    output = tmp_path / "edited.npy"
    argv = ["edit-code", str(CODE), "-o", str(output), "--boundary", str(COARSE_BOUNDARY), "--fixed-alpha", "-4", "--mix-ratio", "0.8"]
    assert main(argv) == 0
    np.testing.assert_allclose(np.load(output), coarse_edit(np.load(CODE), np.load(COARSE_BOUNDARY)), atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fixed-alpha", "3"], "--allow-positive"),
        (["--strength", "1.5"], "strength"),
        (["--keep-from", "0"], "--keep-from"),
        (["--mix-ratio", "2"], "mix ratio"),
        (["--boundary", "MISSING"], "cannot read"),
        (["--boundary", "JPEG", "--fixed-alpha", "-5"], "bad boundary"),
        (["--boundary", "INTERCEPT", "--fixed-alpha", "-5"], "unit vectors"),
        (["--boundary", "PSI05"], "--intercept"),
        (["CODE=NAN"], "NaN"),
        (["CODE=SHAPE"], "shape"),
        (["CODE=PICKLE"], "not a plain .npy"),
    ],
)
def test_every_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    code = CODE
    replacements = {
        "MISSING": str(tmp_path / "missing.npy"),
        "JPEG": str(SEED_DATA / "portraits/00016.jpg"),
        "INTERCEPT": str(INTERCEPT),
        "PSI05": str(SEED_DATA / "boundaries/fine/double_chin_wp_psi0.5.npy"),
    }
    if extra[0].startswith("CODE="):
        code = tmp_path / "bad.npy"
        kind = extra[0].split("=")[1]
        if kind == "NAN":
            np.save(code, np.full((1, 18, 512), np.nan, np.float32))
        elif kind == "SHAPE":
            np.save(code, np.zeros((2, 18, 512), np.float32))
        else:
            np.save(code, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        extra = []
    argv = ["edit-code", str(code), "-o", str(tmp_path / "e.npy")]
    if "--boundary" not in extra:
        argv += ["--boundary", str(BOUNDARY), "--intercept", str(INTERCEPT)]
    status = main([*argv, *(replacements.get(item, item) for item in extra)])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err and "Traceback" not in captured.err
