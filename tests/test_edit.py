"""Fine-boundary editing, checked on the published boundary and the seed portraits' W+ codes."""

from __future__ import annotations

import numpy as np
import pytest

from chinfix.settings import Settings
from tests.seed_data import COARSE_BOUNDARY, FINE_BOUNDARY, FINE_INTERCEPT, SEED_DATA, YAW_BOUNDARY, needs_seed_data
from worker.pipeline.edit import (
    COARSE_ALPHA,
    COARSE_MIX_RATIO,
    SEED_ALPHA,
    EditConfig,
    FineBoundary,
    coarse_edit,
    double_chin_score,
    edit_wplus,
    load_fine_boundary,
    load_pose_normal,
    pose_conditioned_direction,
    remove_double_chin,
)

COARSE = range(0, 7)
FINE = range(7, 18)

pytestmark = needs_seed_data


@pytest.fixture(scope="module")
def fine_boundary() -> FineBoundary:
    return load_fine_boundary(FINE_BOUNDARY, FINE_INTERCEPT)


@pytest.fixture(scope="module")
def seed_codes() -> dict[str, np.ndarray]:
    paths = sorted((SEED_DATA / "latents").glob("*_wp.npy"))
    return {path.stem: np.load(path) for path in paths}


def test_seed_codes_are_seven_wplus_codes(seed_codes):
    assert len(seed_codes) == 7
    for wp in seed_codes.values():
        assert wp.shape == (1, 18, 512) and wp.dtype == np.float32


def test_boundary_loads_as_unit_normals_and_intercepts(fine_boundary):
    assert fine_boundary.normals.shape == (18, 512) and fine_boundary.normals.dtype == np.float32
    assert fine_boundary.intercepts.shape == (18,) and fine_boundary.intercepts.dtype == np.float64
    assert np.allclose(np.linalg.norm(fine_boundary.normals, axis=1), 1.0, atol=1e-5)


def test_every_seed_portrait_scores_double_chin(fine_boundary, seed_codes):
    for name, wp in seed_codes.items():
        per_layer, coarse_mean = double_chin_score(wp, fine_boundary, COARSE)
        assert per_layer.shape == (18,)
        layer3 = wp[0, 3].astype(np.float64) @ fine_boundary.normals[3].astype(np.float64) + fine_boundary.intercepts[3]
        assert per_layer[3] == pytest.approx(layer3, abs=1e-9)
        assert coarse_mean > 0, name
        assert per_layer.mean() > 0, name


def test_default_edit_crosses_the_boundary_and_touches_only_coarse_layers(fine_boundary, seed_codes):
    config = EditConfig()
    for name, wp in seed_codes.items():
        result = remove_double_chin(wp, fine_boundary, config)
        assert not result.skipped
        assert result.alpha < 0
        assert result.score_before > 0 and result.score_after < 0, name
        assert result.score_after == pytest.approx(-config.margin, abs=1e-4)
        assert result.wp.dtype == np.float32 and result.wp.shape == wp.shape
        assert result.wp[:, FINE].tobytes() == wp[:, FINE].tobytes(), name
        moved = result.wp[0, :7].astype(np.float64) - wp[0, :7].astype(np.float64)
        expected = result.alpha * fine_boundary.normals[:7].astype(np.float64)
        np.testing.assert_allclose(moved, expected, atol=2e-6)
        along = np.einsum("kd,kd->k", moved, fine_boundary.normals[:7].astype(np.float64))
        np.testing.assert_allclose(along, result.alpha, atol=1e-4)


def test_seed_alpha_scores_negative_on_coarse_layers_but_not_always_over_all(fine_boundary, seed_codes):
    still_positive_over_all = 0
    for wp in seed_codes.values():
        result = remove_double_chin(wp, fine_boundary, EditConfig(fixed_alpha=SEED_ALPHA))
        assert result.alpha == SEED_ALPHA
        assert result.score_after == pytest.approx(result.score_before + SEED_ALPHA, abs=1e-4)
        assert result.score_after < 0
        per_layer, _ = double_chin_score(result.wp, fine_boundary, COARSE)
        still_positive_over_all += per_layer.mean() > 0
    assert still_positive_over_all == 3


def test_strength_scales_alpha_and_zero_leaves_code_alone(fine_boundary, seed_codes):
    wp = seed_codes["00352_wp"]
    full = remove_double_chin(wp, fine_boundary, EditConfig(strength=1.0))
    half = remove_double_chin(wp, fine_boundary, EditConfig(strength=0.5))
    none = remove_double_chin(wp, fine_boundary, EditConfig(strength=0.0))
    assert half.alpha == pytest.approx(full.alpha / 2)
    assert none.alpha == 0.0 and np.array_equal(none.wp, wp)
    assert full.score_after < half.score_after < none.score_after == pytest.approx(full.score_before)


def test_face_without_double_chin_is_skipped(fine_boundary, seed_codes):
    wp = seed_codes["00016_wp"]
    no_chin = remove_double_chin(wp, fine_boundary, EditConfig()).wp
    result = remove_double_chin(no_chin, fine_boundary, EditConfig(no_chin_threshold=0.0))
    assert result.skipped and result.alpha == 0.0
    assert np.array_equal(result.wp, no_chin)
    assert result.score_after == result.score_before < 0


def test_adaptive_alpha_never_adds_a_double_chin(fine_boundary, seed_codes):
    wp = seed_codes["00016_wp"]
    far_side = edit_wplus(wp, fine_boundary.normals, -10.0)
    result = remove_double_chin(far_side, fine_boundary, EditConfig(no_chin_threshold=-100.0, margin=1.0))
    assert not result.skipped
    assert result.alpha == 0.0
    assert np.array_equal(result.wp, far_side)


def test_pose_conditioned_edit_leaves_yaw_alone_and_still_lands_at_margin(fine_boundary, seed_codes):
    yaw = load_pose_normal(YAW_BOUNDARY)
    direction = pose_conditioned_direction(fine_boundary.normals, yaw)
    np.testing.assert_allclose(direction @ yaw, 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(direction, axis=1), 1.0, atol=1e-12)
    config = EditConfig(margin=1.5)
    for name, wp in seed_codes.items():
        plain = remove_double_chin(wp, fine_boundary, config)
        conditioned = remove_double_chin(wp, fine_boundary, config, pose_normal=yaw)
        assert conditioned.score_after == pytest.approx(-1.5, abs=1e-4), name
        yaw_shift = (conditioned.wp[0, :7].astype(np.float64) - wp[0, :7]) @ yaw
        np.testing.assert_allclose(yaw_shift, 0.0, atol=1e-4)
        assert abs(conditioned.alpha) >= abs(plain.alpha) - 1e-9
        assert conditioned.wp[:, FINE].tobytes() == wp[:, FINE].tobytes()


def test_boundary_rejects_non_unit_normals_and_codes_of_wrong_shape(fine_boundary):
    with pytest.raises(ValueError, match="unit"):
        FineBoundary(normals=fine_boundary.normals * 2, intercepts=fine_boundary.intercepts)
    with pytest.raises(ValueError, match="shape"):
        double_chin_score(np.zeros((18, 512), np.float32), fine_boundary)


def test_strength_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="strength"):
        EditConfig(strength=1.5)


def test_default_adaptive_alpha_averages_the_seeds_minus_five_over_its_real_codes(fine_boundary, seed_codes):
    alphas = [remove_double_chin(wp, fine_boundary, EditConfig()).alpha for wp in seed_codes.values()]
    assert np.mean(alphas) == pytest.approx(SEED_ALPHA, abs=0.25)
    assert len(set(np.round(alphas, 3))) == 7  # still adaptive: each face gets its own alpha


def test_edit_defaults_come_from_the_settings():
    settings = Settings(edit_margin=1.25, no_chin_threshold=-2.0, fixed_alpha=-3.0)
    config = EditConfig.from_settings(settings, strength=0.5, keep_layers=(9, 10))
    assert (config.margin, config.no_chin_threshold, config.fixed_alpha) == (1.25, -2.0, -3.0)
    assert (config.strength, config.keep_layers) == (0.5, (9, 10))
    defaults = EditConfig.from_settings(Settings(), strength=1.0, keep_layers=EditConfig().keep_layers)
    assert defaults == EditConfig()
    assert Settings().condition_pose is False


def test_fixed_seed_alpha_is_the_seeds_edit_exactly(fine_boundary, seed_codes):
    wp = seed_codes["00191_wp"]
    result = remove_double_chin(wp, fine_boundary, EditConfig(fixed_alpha=SEED_ALPHA))
    expected = wp.astype(np.float64) + SEED_ALPHA * fine_boundary.normals.astype(np.float64)[None]
    np.testing.assert_allclose(result.wp[:, COARSE], expected[:, COARSE], atol=1e-5)
    assert result.wp[:, FINE].tobytes() == wp[:, FINE].tobytes()


def test_a_boundary_without_intercepts_edits_only_with_a_fixed_alpha(seed_codes):
    boundary = load_fine_boundary(SEED_DATA / "boundaries/fine/double_chin_wp_psi0.5.npy")
    wp = seed_codes["00212_wp"]
    result = remove_double_chin(wp, boundary, EditConfig(fixed_alpha=-5.0))
    assert result.score_before is None and result.score_after is None and result.alpha == -5.0
    with pytest.raises(ValueError, match="intercepts"):
        remove_double_chin(wp, boundary, EditConfig(fixed_alpha=None))


def test_positive_alpha_is_refused_unless_allowed():
    with pytest.raises(ValueError, match="towards a double chin"):
        EditConfig(fixed_alpha=2.0)
    assert EditConfig(fixed_alpha=2.0, allow_positive=True).fixed_alpha == 2.0


def test_coarse_edit_is_the_seeds_step_one(seed_codes):
    normal = np.load(COARSE_BOUNDARY).astype(np.float64).reshape(-1)
    wp = seed_codes["00352_wp"]
    edited = coarse_edit(wp, normal)
    moved = wp[0].astype(np.float64) + COARSE_ALPHA * normal
    np.testing.assert_allclose(edited[0, COARSE], moved[COARSE], atol=1e-5)
    mixed = (1 - COARSE_MIX_RATIO) * moved[FINE] + COARSE_MIX_RATIO * wp[0, FINE]
    np.testing.assert_allclose(edited[0, FINE], mixed, atol=1e-5)
    assert edited.shape == wp.shape and edited.dtype == np.float32


def test_a_w_boundary_loads_repeated_over_every_layer():
    boundary = load_fine_boundary(COARSE_BOUNDARY, num_ws=18)
    assert boundary.normals.shape == (18, 512) and boundary.intercepts is None
    assert np.array_equal(boundary.normals[0], boundary.normals[17])
    with pytest.raises(ValueError, match="W boundary"):
        load_fine_boundary(COARSE_BOUNDARY)
