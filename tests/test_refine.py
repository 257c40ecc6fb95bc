"""Refinement: the blend contract, diffuse with a tiny generator, and the contour warp's accuracy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.generator_fixtures import build_tiny_generator
from tests.perceptual_fixtures import build_random_seed_perceptual
from worker.pipeline.invert import rgb_from_images, targets_from_rgb
from worker.pipeline.masks import soft_neck_mask
from worker.pipeline.refine import (
    TRAINING_DIFFUSE,
    DiffuseConfig,
    PointPairs,
    WarpConfig,
    WarpRegions,
    blend_under_mask,
    contour_pairs,
    diffuse_features,
    diffuse_target,
    refine_diffuse,
    refine_none,
    refine_warp,
    region_side_edges,
    seed_mesh_anchors,
    seed_morph,
    seed_warp_points,
    triangle_warp_map,
    warp_band,
)


def _random_rgb(seed: int, side: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def _lower_neck(side: int) -> np.ndarray:
    neck = np.zeros((side, side), bool)
    neck[3 * side // 4 :, side // 4 : 3 * side // 4] = True
    return neck


def test_blend_is_the_original_where_the_soft_mask_is_zero() -> None:
    side = 64
    original, edited = _random_rgb(0, side), _random_rgb(1, side)
    soft = soft_neck_mask(_lower_neck(side))
    blended = blend_under_mask(edited, original, soft)
    assert np.array_equal(blended[soft == 0], original[soft == 0])
    assert np.array_equal(blended[soft == 1], edited[soft == 1])
    between = (soft > 0) & (soft < 1)
    expected = original[between] * (1 - soft[between, None]) + edited[between] * soft[between, None]
    assert np.abs(blended[between].astype(float) - expected).max() <= 0.5 + 1e-4
    assert np.array_equal(refine_none(edited, original, soft).image, blended)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory) -> dict:
    G = build_tiny_generator(resolution=32, seed=0)
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        codes = G.mapping(z, truncation_psi=0.7)
        images = rgb_from_images(G.synthesis(codes, noise_mode="const"))
    original_wp = codes[:1].numpy()
    # the "edited" code: the second face's coarse layers on the first face
    edited_wp = original_wp.copy()
    edited_wp[:, :4] = codes[1:, :4].numpy()
    with torch.no_grad():
        edited = rgb_from_images(G.synthesis(torch.from_numpy(edited_wp), noise_mode="const"))[0]
    neck = _lower_neck(32)
    return {
        "G": G,
        "original_wp": original_wp,
        "original": images[0],
        "edited": edited,
        "neck": neck,
        "soft": soft_neck_mask(neck),
        "perceptual": build_random_seed_perceptual(0, tmp_path_factory.mktemp("vgg")),
    }


def test_diffuse_with_a_tiny_generator(tiny_setup: dict) -> None:
    s = tiny_setup
    calls = []
    result = refine_diffuse(
        s["G"],
        s["original_wp"],
        s["edited"],
        s["original"],
        s["neck"],
        s["soft"],
        s["perceptual"],
        DiffuseConfig(steps=8, learning_rate=0.05),
        progress=lambda step, total, losses: calls.append((step, total, losses.clone())),
    )
    outside, inside = s["soft"] == 0, s["neck"]
    assert outside.any() and inside.any()
    assert result.image.shape == s["original"].shape and result.image.dtype == np.uint8
    assert np.array_equal(result.image[outside], s["original"][outside])
    assert not np.array_equal(result.image[inside], s["original"][inside])
    assert result.wp.shape == s["original_wp"].shape and result.wp.dtype == np.float32
    assert not np.allclose(result.wp, s["original_wp"])
    assert [call[:2] for call in calls] == [(step, 8) for step in range(1, 9)]
    assert np.allclose([call[2][0] for call in calls], result.losses) and np.isfinite(result.losses).all()
    assert result.losses[-1] < result.losses[0]
    assert all(parameter.grad is None for parameter in s["G"].parameters())


def test_diffuse_sees_the_edit_only_through_the_perceptual_term(tiny_setup: dict) -> None:
    """The pixel term is blind inside the soft mask: without the perceptual term, what the edited
    generation shows inside the neck cannot change the result; with it, it does."""
    s = tiny_setup
    other_edit = s["edited"].copy()
    other_edit[s["neck"]] = 255 - other_edit[s["neck"]]

    def refined(edited: np.ndarray, perceptual_weight: float) -> np.ndarray:
        config = DiffuseConfig(steps=3, learning_rate=0.05, perceptual_weight=perceptual_weight)
        return refine_diffuse(
            s["G"], s["original_wp"], edited, s["original"], s["neck"], s["soft"], s["perceptual"], config
        ).wp

    assert np.array_equal(refined(s["edited"], 0.0), refined(other_edit, 0.0))
    assert not np.allclose(refined(s["edited"], 1e-4), refined(other_edit, 1e-4))


def test_diffuse_loss_is_the_seeds_mask_diffuse_loss(tiny_setup: dict) -> None:
    """First step's loss = mean(((x - G(w0)) * (1 - D))^2) + 1e-4 * mean((F(pool256 x) - F(pool256 G(w0)))^2),
    with x the original outside the HARD mask and the edited generation inside it."""
    s = tiny_setup
    config = DiffuseConfig(steps=1)
    result = refine_diffuse(
        s["G"], s["original_wp"], s["edited"], s["original"], s["neck"], s["soft"], s["perceptual"], config
    )
    target_rgb = s["original"].copy()
    target_rgb[s["neck"]] = s["edited"][s["neck"]]
    x = targets_from_rgb([target_rgb])
    with torch.no_grad():
        generated = s["G"].synthesis(torch.from_numpy(s["original_wp"]), noise_mode="const")
        outside = torch.from_numpy(1 - s["soft"])[None, None]
        pixel = (((x - generated) * outside) ** 2).mean()
        pool = torch.nn.AdaptiveAvgPool2d((32, 32))  # 256 for the seed's 1024 px; a 32 px generator is not upsampled
        feature = ((s["perceptual"](pool(x)) - s["perceptual"](pool(generated))) ** 2).mean()
    assert result.losses[0] == pytest.approx(float(pixel + 1e-4 * feature), rel=1e-5)
    assert np.array_equal(diffuse_target(s["edited"], s["original"], s["neck"]), target_rgb)


def test_diffuse_defaults_are_the_seeds_and_the_settings():
    from chinfix.settings import Settings

    config = DiffuseConfig()
    assert (config.steps, config.learning_rate, config.perceptual_weight) == (100, 0.01, 1e-4)
    settings = Settings()
    assert (settings.diffuse_steps, settings.diffuse_lr, settings.diffuse_perceptual_weight) == (100, 0.01, 1e-4)
    assert TRAINING_DIFFUSE.perceptual_weight == 5e-5


def test_diffuse_features_pool_1024_px_images_to_256_as_the_seed_does() -> None:
    seen = []
    images = torch.rand(1, 3, 1024, 1024) * 2 - 1
    diffuse_features(lambda pooled: seen.append(pooled) or pooled, images)
    assert seen[0].shape[-2:] == (256, 256) and torch.allclose(seen[0], F.avg_pool2d(images, 4), atol=1e-6)
    diffuse_features(lambda pooled: seen.append(pooled) or pooled, images[..., :64, :64])
    assert seen[1].shape[-2:] == (64, 64)


def test_diffuse_rejects_crops_of_another_size(tiny_setup: dict) -> None:
    s = tiny_setup
    with pytest.raises(ValueError, match="32x32x3"):
        refine_diffuse(
            s["G"], s["original_wp"], _random_rgb(0, 64), _random_rgb(1, 64),
            np.zeros((64, 64), bool), np.zeros((64, 64), np.float32), s["perceptual"],
        )


def _ellipse(side: int, centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros((side, side), np.uint8)
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, 1, -1)
    return canvas.astype(bool)


def test_mesh_anchors_are_the_seeds_get_tris_points() -> None:
    anchors = seed_mesh_anchors(1024)
    border = [(0, 0), (512, 0), (1023, 0), (1023, 512), (1023, 1023), (512, 1023), (0, 1023), (0, 512)]
    inner = [(512, 256)]
    for i in (1, 2, 6, 7):
        inner += [(128 * i, 128), (128 * i, 896)]
    for i in range(2, 7):
        inner += [(128, 128 * i), (896, 128 * i)]
    np.testing.assert_array_equal(anchors, np.array(border + inner, dtype=np.float64))


def test_contour_pairs_sample_the_seeds_rows() -> None:
    original = _ellipse(256, (128, 120), (70, 95))
    edited = _ellipse(256, (131, 110), (60, 90))
    left, right = contour_pairs(original, edited, rows=5)
    top = max(np.flatnonzero(original.any(axis=1))[0], np.flatnonzero(edited.any(axis=1))[0])
    bottom = min(np.flatnonzero(original.any(axis=1))[-1], np.flatnonzero(edited.any(axis=1))[-1])
    rows = np.linspace(top, bottom, 6).astype(np.uint32)[:-1]
    np.testing.assert_array_equal(left.original[:, 1], rows)
    original_left, original_right = region_side_edges(original, rows)
    edited_left, _ = region_side_edges(edited, rows)
    np.testing.assert_array_equal(left.original[:, 0], original_left)
    np.testing.assert_array_equal(right.original[:, 0], original_right)
    np.testing.assert_array_equal(left.edited[:, 0], edited_left)
    empty_left, _ = contour_pairs(np.zeros_like(original), edited, rows=5)
    assert len(empty_left.original) == 0


def _face_and_neck(side: int, centre_y: int, axes: tuple[int, int], neck_half_width: int) -> WarpRegions:
    face = _ellipse(side, (side // 2, centre_y), axes)
    neck = np.zeros((side, side), bool)
    neck[centre_y:, side // 2 - neck_half_width : side // 2 + neck_half_width] = True
    return WarpRegions(face=face, neck=neck & ~face)


def _landmarks(side: int) -> np.ndarray:
    landmarks = np.zeros((68, 2))
    angles = np.linspace(np.pi, 0, 17)
    landmarks[:17, 0] = side / 2 - 0.3 * side * np.cos(angles)
    landmarks[:17, 1] = 0.35 * side + 0.35 * side * np.sin(angles)
    return landmarks


def test_warp_points_push_the_face_and_anchor_the_edited_neck() -> None:
    side = 512
    original = _face_and_neck(side, 240, (150, 200), 90)
    edited = _face_and_neck(side, 230, (130, 190), 80)
    landmarks = _landmarks(side)
    pairs = seed_warp_points(original, edited, landmarks)
    band, chin_row = warp_band(landmarks, side)
    assert chin_row == int(landmarks[8, 1])
    band_rows = np.flatnonzero(band.any(axis=1))
    assert band_rows[0] == int(max(landmarks[0, 1], landmarks[16, 1]))
    assert band_rows[-1] == int(min(landmarks[7, 1], landmarks[10, 1])) - 1
    face_left, face_right = contour_pairs(original.face & band, edited.face & band, 5)
    pushed = face_left.original + (face_left.edited - face_left.original) * 1.2
    np.testing.assert_array_equal(pairs.original[:5], face_left.original.astype(np.int64))
    np.testing.assert_array_equal(pairs.edited[:5], pushed.astype(np.int64))
    assert np.abs(pairs.edited[:5, 0] - pairs.original[:5, 0]).min() >= 5, "the test needs the face points to move"
    # the neck points (edited neck, below the chin) are the same on both sides: they hold the neck still
    np.testing.assert_array_equal(pairs.original[5:15], pairs.edited[5:15])
    assert np.all(pairs.original[5:15, 1] >= chin_row)


def test_triangle_map_reads_each_target_corner_from_its_source() -> None:
    side = 128
    anchors = seed_mesh_anchors(side)
    target = np.concatenate([anchors, [[40.0, 70.0], [90.0, 72.0]]])
    source = target.copy()
    source[-2:] += [[-6.0, 0.0], [5.0, 0.0]]
    from scipy.spatial import Delaunay

    map_x, map_y = triangle_warp_map((side, side), source, target, Delaunay(target).simplices)
    for (tx, ty), (sx, sy) in zip(target[-2:], source[-2:], strict=True):
        assert map_x[int(ty), int(tx)] == pytest.approx(sx, abs=1e-3)
        assert map_y[int(ty), int(tx)] == pytest.approx(sy, abs=1e-3)
    assert np.allclose(map_x[0], np.arange(side), atol=0.25) and np.allclose(map_y[0], 0.0, atol=0.25)


def test_morph_moves_the_edited_contour_half_way() -> None:
    side = 256
    edited = np.zeros((side, side, 3), np.uint8)
    edited[:, 100:] = 200  # an edge at x = 100 in the edited image
    pairs = PointPairs(original=np.array([[80, 128]]), edited=np.array([[100, 128]]))
    morphed = seed_morph(edited, pairs)
    row = morphed[128, :, 0]
    assert row[85] < 50 and row[95] > 150  # the edge now sits half way, at x = 90
    assert np.array_equal(seed_morph(edited, PointPairs(np.zeros((0, 2)), np.zeros((0, 2)))), edited)


def test_refine_warp_keeps_the_original_outside_the_soft_mask() -> None:
    side = 256
    original_regions = _face_and_neck(side, 110, (70, 95), 40)
    edited_regions = _face_and_neck(side, 100, (58, 85), 36)
    original = np.where(original_regions.face[..., None], np.uint8(200), np.uint8(40)).repeat(3, axis=2)
    edited = np.where(edited_regions.face[..., None], np.uint8(190), np.uint8(50)).repeat(3, axis=2)
    neck = np.zeros((side, side), bool)
    neck[200:, 90:170] = True
    soft = soft_neck_mask(neck)
    landmarks = _landmarks(side)
    result = refine_warp(edited, original, original_regions, edited_regions, landmarks, soft)
    assert np.array_equal(result.image[soft == 0], original[soft == 0])
    morphed = seed_morph(edited, seed_warp_points(original_regions, edited_regions, landmarks))
    assert np.array_equal(result.image[soft == 1], morphed[soft == 1])
    assert result.wp is None
