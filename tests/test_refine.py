"""Refinement: the blend contract, diffuse with a tiny generator, and the contour warp's accuracy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.generator_fixtures import build_tiny_generator
from worker.models.lpips import build_random_lpips
from worker.pipeline.invert import rgb_from_images
from worker.pipeline.masks import soft_neck_mask
from worker.pipeline.refine import (
    DiffuseConfig,
    PointPairs,
    WarpConfig,
    blend_under_mask,
    jaw_contour_pairs,
    piecewise_affine_map,
    piecewise_affine_warp,
    refine_diffuse,
    refine_none,
    refine_warp,
    region_side_edges,
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
def tiny_setup() -> dict:
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
        "lpips": build_random_lpips(seed=0),
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
        s["lpips"],
        DiffuseConfig(steps=8, learning_rate=0.05),
        progress=lambda step, total, losses: calls.append((step, total, losses.copy())),
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
            s["G"], s["original_wp"], edited, s["original"], s["neck"], s["soft"], s["lpips"], config
        ).wp

    assert np.array_equal(refined(s["edited"], 0.0), refined(other_edit, 0.0))
    assert not np.allclose(refined(s["edited"], 1.0), refined(other_edit, 1.0))


def test_diffuse_rejects_crops_of_another_size(tiny_setup: dict) -> None:
    s = tiny_setup
    with pytest.raises(ValueError, match="32x32x3"):
        refine_diffuse(
            s["G"], s["original_wp"], _random_rgb(0, 64), _random_rgb(1, 64),
            np.zeros((64, 64), bool), np.zeros((64, 64), np.float32), s["lpips"],
        )


def _ellipse(side: int, centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros((side, side), np.uint8)
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, 1, -1)
    return canvas.astype(bool)


@pytest.mark.parametrize(
    ("side", "original_axes", "edited_axes"),
    [(256, (70, 95), (58, 85)), (256, (60, 90), (72, 80)), (1024, (300, 380), (260, 360))],
)
def test_warp_moves_contour_points_onto_their_targets(side: int, original_axes: tuple, edited_axes: tuple) -> None:
    original_face = _ellipse(side, (side // 2, side * 7 // 16), original_axes)
    edited_face = _ellipse(side, (side // 2 + side // 64, side * 6 // 16), edited_axes)
    pairs = jaw_contour_pairs(original_face, edited_face, WarpConfig(rows=5))
    rows = np.unique(pairs.target[:, 1]).astype(int)
    assert len(rows) == 5
    shift = np.abs(pairs.source[:, 0] - pairs.target[:, 0])
    assert np.all(pairs.source[:, 1] == pairs.target[:, 1])
    assert np.sum(shift >= 2) == 10, "the test needs all ten side points to really move"

    edited_image = np.where(edited_face[..., None], np.uint8(210), np.uint8(20)).repeat(3, axis=2)
    warped_face = piecewise_affine_warp(edited_image, pairs)[..., 0] > 115
    warped_left, warped_right = region_side_edges(warped_face, rows)
    original_left, original_right = region_side_edges(original_face, rows)
    assert np.abs(warped_left - original_left).max() <= 1.0
    assert np.abs(warped_right - original_right).max() <= 1.0


def test_piecewise_affine_map_sends_targets_to_sources_and_keeps_the_border() -> None:
    side = 128
    rng = np.random.default_rng(0)
    target = rng.integers(20, 108, (6, 2)).astype(np.float64)
    source = target + rng.uniform(-6, 6, target.shape)
    map_x, map_y = piecewise_affine_map((side, side), PointPairs(source, target))
    ty, tx = target[:, 1].astype(int), target[:, 0].astype(int)
    assert np.allclose(map_x[ty, tx], source[:, 0], atol=1e-3)
    assert np.allclose(map_y[ty, tx], source[:, 1], atol=1e-3)
    # the border stays put (to within the rasteriser's sub-pixel overlap of neighbouring triangles)
    along = np.arange(side, dtype=np.float32)
    last = side - 1.0
    assert np.allclose(map_x[0], along, atol=0.25) and np.allclose(map_y[0], 0.0, atol=0.25)
    assert np.allclose(map_x[-1], along, atol=0.25) and np.allclose(map_y[-1], last, atol=0.25)
    assert np.allclose(map_x[:, 0], 0.0, atol=0.25) and np.allclose(map_y[:, 0], along, atol=0.25)
    assert np.allclose(map_x[:, -1], last, atol=0.25) and np.allclose(map_y[:, -1], along, atol=0.25)


def test_warp_without_pairs_is_the_identity() -> None:
    image = _random_rgb(2, 48)
    empty = PointPairs(np.zeros((0, 2)), np.zeros((0, 2)))
    assert np.array_equal(piecewise_affine_warp(image, empty), image)
    none = np.zeros((48, 48), bool)
    assert len(jaw_contour_pairs(none, _ellipse(48, (24, 24), (10, 12))).source) == 0


def test_refine_warp_keeps_the_original_outside_the_soft_mask() -> None:
    side = 256
    original_face = _ellipse(side, (128, 110), (70, 95))
    edited_face = _ellipse(side, (128, 100), (58, 85))
    original = np.where(original_face[..., None], np.uint8(200), np.uint8(40)).repeat(3, axis=2)
    edited = np.where(edited_face[..., None], np.uint8(190), np.uint8(50)).repeat(3, axis=2)
    neck = np.zeros((side, side), bool)
    neck[200:, 90:170] = True
    soft = soft_neck_mask(neck)
    result = refine_warp(edited, original, original_face, edited_face, soft)
    assert np.array_equal(result.image[soft == 0], original[soft == 0])
    assert np.array_equal(
        result.image[soft == 1], piecewise_affine_warp(edited, jaw_contour_pairs(original_face, edited_face))[soft == 1]
    )
    assert result.wp is None
