"""The real pipeline behind POST /edit: API and worker as processes, tiny random-weight models in the official formats.

Nothing is stubbed: the worker runs `worker.pipeline.portrait:edit_portrait` (the default) on a seed portrait with
a model store built by `tests.tiny_models`, and few optimisation steps so a job takes about a second.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch

from chinfix.contract import DEBUG_IMAGE_NAMES, Stage
from chinfix.imaging import ImageLimits, decode_image
from model_store.store import ModelStore
from tests.service_harness import PORTRAITS, start_worker, wait_for_job, wait_for_worker
from tests.test_service import decode, submit
from tests.tiny_models import build_tiny_model_store
from worker.models.bisenet import load_bisenet
from worker.pipeline.align import AlignmentTransform
from worker.pipeline.compose import warp_mask_to_photo
from worker.pipeline.masks import MaskSource, neck_mask_from_parsing, parse_face
from worker.registry import DIFFUSE_PERCEPTUAL, DOUBLE_CHIN_CLASSIFIER, FACE_PARSING, FINE_BOUNDARY, GENERATOR, LANDMARK_MODELS, PERCEPTUAL

INVERT_STEPS = 3
FEW_STEPS = {
    "CHINFIX_INVERT_STEPS": str(INVERT_STEPS),
    "CHINFIX_DIFFUSE_STEPS": "3",
    # Random LPIPS weights put every neck far over CHINFIX_MAX_NECK_LPIPS: report the gate, keep the edit.
    "CHINFIX_QUALITY_POLICY": "report",
}
REQUIRED_MODELS = (GENERATOR, *FINE_BOUNDARY, *PERCEPTUAL, DIFFUSE_PERCEPTUAL, *LANDMARK_MODELS["dlib"])

pytestmark = pytest.mark.skipif(len(PORTRAITS) < 6, reason="the seed portraits are not beside the checkout")


def input_rgb(photo: Path) -> np.ndarray:
    """HxWx3 uint8 RGB: the photo decoded exactly as the worker decodes an upload."""
    return decode_image(photo.read_bytes(), ImageLimits(max_pixels=10**9, min_side=1)).rgb


def pasted_footprint(quad: list[list[float]], soft_mask: np.ndarray, photo_shape: tuple[int, ...]) -> np.ndarray:
    """HxW bool: the photo pixels `paste_back` may change, from the report's quad and the debug soft mask.

    soft_mask: SxS uint8, the debug image (D * 255, rounded). Where the stored value is 0, D < 1/510, and
    `paste_back` rounds original + (edited - original) * D back to the original, so such pixels cannot change.
    The report rounds the quad to 0.01 px, which moves the footprint's rim by a hundredth of a pixel at most:
    one pixel of growth covers that.
    """
    transform = AlignmentTransform.from_quad(np.asarray(quad), soft_mask.shape[0])
    weights = warp_mask_to_photo(transform, soft_mask.astype(np.float32) / 255.0, photo_shape)
    return cv2.dilate((weights > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def assert_changed_only_inside_footprint(original: np.ndarray, edited: np.ndarray, footprint: np.ndarray) -> None:
    """Both HxWx3 uint8 RGB; footprint HxW bool."""
    assert edited.shape == original.shape
    changed = (edited != original).any(axis=2)
    assert not (changed & ~footprint).any(), f"{int((changed & ~footprint).sum())} pixels changed outside the mask"
    assert changed.any(), "the edit changed nothing inside the mask"


def expected_mask_source(parser: torch.nn.Module, aligned_rgb: np.ndarray) -> MaskSource:
    """What the neck mask stage must report for this SxSx3 uint8 RGB crop: parsing when the parser finds a neck."""
    class_map = parse_face(parser, aligned_rgb)
    return MaskSource.PARSING if neck_mask_from_parsing(class_map).any() else MaskSource.LANDMARKS


def fetch_debug_image(job: dict, name: str) -> bytes:
    response = httpx.get(job["links"]["debug"][name], timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def test_real_pipeline_edits_only_inside_the_pasted_neck(
    isolated_env: dict[str, str], api_server: str, tmp_path: Path
) -> None:
    store = build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]))
    worker = start_worker({**isolated_env, **FEW_STEPS}, tmp_path)
    parser = load_bisenet(store.path(FACE_PARSING))
    # The tiny parser (seed 0) finds a neck in portraits 4 and 5 and none in 0: both mask sources get exercised.
    photos = {"diffuse": PORTRAITS[5], "warp": PORTRAITS[4], "none": PORTRAITS[0]}
    try:
        job_ids = {refine: submit(api_server, photo, refine=refine, output="png", debug="true")
                   for refine, photo in photos.items()}  # fmt: skip
        mask_sources = set()
        for refine, photo in photos.items():
            job = wait_for_job(api_server, job_ids[refine], {"succeeded", "failed"})
            assert job["status"] == "succeeded", (refine, job, worker.output())
            original = input_rgb(photo)
            height, width = original.shape[:2]
            assert (job["result"]["width"], job["result"]["height"]) == (width, height)
            assert job["result"]["content_type"] == "image/png"
            assert set(job["links"]["debug"]) == set(DEBUG_IMAGE_NAMES)

            report = job["report"]
            assert report["refine"] == refine and report["faces_found"] == 1
            assert set(report["timings_ms"]) == {stage.value for stage in Stage}
            assert all(milliseconds >= 0 for milliseconds in report["timings_ms"].values())
            assert report["timings_ms"]["invert"] > 0 and report["timings_ms"]["refine"] > 0
            assert report["inversion"]["steps"] == INVERT_STEPS
            # The tiny boundary's intercepts put every face on the double-chin side (tests.tiny_models).
            assert report["no_double_chin_detected"] is False
            assert report["alpha"] < 0 and report["score_after"] < 0 < report["score_before"]
            aligned = decode(fetch_debug_image(job, "aligned"))
            assert report["mask_source"] == expected_mask_source(parser, aligned)
            mask_sources.add(report["mask_source"])

            edited = decode(httpx.get(job["result"]["url"], timeout=10).content)
            soft_mask = decode(fetch_debug_image(job, "soft_mask"))[:, :, 0]
            footprint = pasted_footprint(report["quad"], soft_mask, original.shape)
            assert_changed_only_inside_footprint(original, edited, footprint)
        assert mask_sources == {MaskSource.PARSING, MaskSource.LANDMARKS}, "both neck mask sources must be exercised"
    finally:
        worker.stop()


def test_without_a_face_parser_the_neck_mask_comes_from_landmarks(
    isolated_env: dict[str, str], api_server: str, tmp_path: Path
) -> None:
    build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]), with_parser=False)
    worker = start_worker({**isolated_env, **FEW_STEPS}, tmp_path)
    try:
        readiness = wait_for_worker(api_server)
        # The parser and the double-chin classifier are optional: their absence leaves the worker ready.
        assert readiness["ready"] is True and readiness["workers"][0]["missing_models"] == []
        assert readiness["workers"][0]["missing_optional_models"] == [FACE_PARSING, DOUBLE_CHIN_CLASSIFIER]
        job = wait_for_job(api_server, submit(api_server, PORTRAITS[3], refine="warp"), {"succeeded", "failed"})
        assert job["status"] == "succeeded", (job, worker.output())
        assert job["report"]["mask_source"] == MaskSource.LANDMARKS
        quality = job["report"]["quality"]
        assert quality["double_chin_probability"] is None
        assert DOUBLE_CHIN_CLASSIFIER in quality["unmeasured"]["double_chin_probability"]
    finally:
        worker.stop()


def test_without_models_readiness_and_the_job_name_every_missing_model(
    isolated_env: dict[str, str], api_server: str, tmp_path: Path
) -> None:
    """tests/test_service.py checks model_missing, but only for three of the names; this checks all of them."""
    missing = ModelStore(Path(isolated_env["CHINFIX_MODEL_DIR"])).missing(REQUIRED_MODELS)
    assert {GENERATOR, *FINE_BOUNDARY, *PERCEPTUAL} <= set(missing)
    worker = start_worker(isolated_env, tmp_path)
    try:
        readiness = wait_for_worker(api_server)
        assert readiness["ready"] is False
        assert readiness["workers"][0]["missing_models"] == missing
        assert any(all(name in problem for name in missing) for problem in readiness["problems"])

        job = wait_for_job(api_server, submit(api_server, PORTRAITS[1]), {"succeeded", "failed"})
        assert job["status"] == "failed" and job["error"]["code"] == "model_missing", job
        assert f"chinfix models pull {' '.join(missing)}" in job["error"]["message"]
    finally:
        worker.stop()
