"""Quality facts and the quality gate: the measures on known images, the policies through the real pipeline
(tiny random-weight models), and a failed job that keeps its report through a real worker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from chinfix.contract import EditOptions, QualityPolicy, RefineMethod, ReturnKind
from chinfix.errors import LowQualityError
from chinfix.settings import Settings
from model_store.store import ModelStore
from tests.service_harness import PORTRAITS, SEED_DATA, api_and_worker, wait_for_job
from tests.test_pipeline_service import FEW_STEPS, input_rgb
from tests.test_service import submit
from tests.tiny_models import TINY_CLASSIFIER_BLOCKS, build_tiny_model_store
from worker.models.face_identity import load_face_describer
from worker.models.landmarks import load_dlib_landmarker
from worker.models.lpips import build_random_lpips
from worker.pipeline.portrait import PipelineConfig, run_pipeline
from worker.pipeline.quality import (
    PSNR_CAP_DB,
    QualityGate,
    changed_area,
    identity_similarity,
    mask_box,
    masked_psnr,
    neck_fit,
)
from worker.registry import DOUBLE_CHIN_CLASSIFIER, FACE_RECOGNITION, ModelRegistry
from worker.training.classifier import DoubleChinClassifier, double_chin_probabilities

REFERENCE = SEED_DATA / "reference"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="the seed reference images are not beside the checkout")
needs_portraits = pytest.mark.skipif(not PORTRAITS, reason="the seed portraits are not beside the checkout")


def test_mask_box_and_changed_area() -> None:
    before = np.zeros((40, 60, 3), np.uint8)
    after = before.copy()
    after[10:14, 20:25, 1] = 7
    weights = np.zeros((40, 60), np.float32)
    weights[8:16, 18:30] = 0.25
    assert mask_box(weights) == [18, 8, 30, 16]
    assert mask_box(np.zeros((5, 5))) is None
    assert changed_area(before, after, weights) == {"pixels": 20, "share": round(20 / 2400, 6), "mask_box": [18, 8, 30, 16]}


def test_masked_psnr_counts_only_weighted_pixels() -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    other = image.copy()
    other[:4] = 110  # an error of 10 levels in the top half
    top = np.zeros((8, 8), np.float32)
    top[:4] = 1.0
    bottom = 1.0 - top
    assert masked_psnr(image, other, top) == pytest.approx(10 * np.log10(255**2 / 100))
    assert masked_psnr(image, other, bottom) == PSNR_CAP_DB


def test_lpips_distance_map_averages_to_the_distance() -> None:
    metric = build_random_lpips(seed=1)
    generator = torch.Generator().manual_seed(0)
    images_a, images_b = (torch.rand((1, 3, 64, 64), generator=generator) * 2 - 1 for _ in range(2))
    features_a, features_b = metric.features(images_a), metric.features(images_b)
    distance_map = metric.distance_map(features_a, features_b, (64, 64))
    assert distance_map.shape == (1, 1, 64, 64)
    assert float(distance_map.mean()) == pytest.approx(float(metric.distance(features_a, features_b)[0]), rel=0.02)


def test_neck_fit_sees_only_what_is_under_the_mask() -> None:
    metric = build_random_lpips(seed=1)
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    soft_mask = np.zeros((96, 96), np.float32)
    soft_mask[60:90, 20:70] = 1.0
    assert neck_fit(metric, original, original, soft_mask) == {"lpips": 0.0, "psnr_db": PSNR_CAP_DB}

    changed_outside = original.copy()
    changed_outside[:40] = 0
    assert neck_fit(metric, original, changed_outside, soft_mask) == {"lpips": 0.0, "psnr_db": PSNR_CAP_DB}

    changed_inside = original.copy()
    changed_inside[70:80, 30:60] = 255 - changed_inside[70:80, 30:60]
    fit = neck_fit(metric, original, changed_inside, soft_mask)
    assert fit["lpips"] > 0.0 and fit["psnr_db"] < 20.0


@needs_reference
def test_identity_default_passes_the_papers_edit_and_refuses_the_coarse_drift() -> None:
    """The seed's reference face through the method: the final result keeps the identity, the coarse edit (whose
    identity drift is why the paper has a fine stage) does not. CHINFIX_MIN_IDENTITY's default lies between."""
    describer = load_face_describer(ModelStore().path(FACE_RECOGNITION))
    landmarker = load_dlib_landmarker()
    images = {name: input_rgb(REFERENCE / f"synthetic_001645_{name}.jpg") for name in ("w_doublechin", "res", "wo_doublechin")}
    original = images["w_doublechin"]
    landmarks = landmarker.landmarks(original, landmarker.detect(original)[0])
    default = Settings.model_fields["min_identity"].default
    assert identity_similarity(describer, original, original, landmarks) == pytest.approx(1.0)
    assert identity_similarity(describer, original, images["res"], landmarks) > default
    assert identity_similarity(describer, original, images["wo_doublechin"], landmarks) < default


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    model_dir = tmp_path_factory.mktemp("models")
    build_tiny_model_store(model_dir)
    return ModelRegistry.load(Settings(model_dir=model_dir, device="cpu", invert_steps=3, diffuse_steps=3))


def run_with_gate(registry: ModelRegistry, gate: QualityGate, photo: np.ndarray, **options: object):
    config = replace(PipelineConfig.from_settings(registry.settings), quality_gate=gate)
    return run_pipeline(photo, EditOptions(refine=RefineMethod.WARP, **options), registry, config, lambda *_: None)


@needs_portraits
def test_an_edit_that_passes_comes_back_edited_with_its_facts(tiny_registry: ModelRegistry) -> None:
    photo = input_rgb(PORTRAITS[0])
    result = run_with_gate(tiny_registry, QualityGate(min_identity=-1.0, max_neck_lpips=1e9), photo)
    quality = result.report["quality"]
    assert quality["passed"] is True and quality["reasons"] == [] and quality["returned"] == "edited"
    assert 0.5 < quality["identity_similarity"] <= 1.0
    assert quality["neck_fit"]["lpips"] > 0 and 0 < quality["neck_fit"]["psnr_db"] < PSNR_CAP_DB
    changed = (result.image != photo).any(axis=2)
    area = quality["changed_area"]
    assert area["pixels"] == int(changed.sum()) > 0 and area["share"] == pytest.approx(changed.mean(), abs=1e-6)
    left, top, right, bottom = area["mask_box"]
    rows, cols = np.nonzero(changed)
    assert left <= cols.min() and cols.max() < right and top <= rows.min() and rows.max() < bottom
    # This store has no double-chin classifier: the probability is null, and the report says why.
    assert quality["double_chin_probability"] is None
    assert list(quality["unmeasured"]) == ["double_chin_probability"]
    assert DOUBLE_CHIN_CLASSIFIER in quality["unmeasured"]["double_chin_probability"]


@needs_portraits
@pytest.mark.parametrize("return_kind", [ReturnKind.PHOTO, ReturnKind.ALIGNED])
def test_return_original_gives_back_the_input_and_says_why(tiny_registry: ModelRegistry, return_kind: ReturnKind) -> None:
    photo = input_rgb(PORTRAITS[0])  # its warp mask is not empty with the tiny models, so both checks can fail
    gate = QualityGate(min_identity=1.1, max_neck_lpips=0.0, policy=QualityPolicy.RETURN_ORIGINAL)
    result = run_with_gate(tiny_registry, gate, photo, debug=True, **{"return": return_kind})
    quality = result.report["quality"]
    assert quality["passed"] is False and quality["returned"] == "original"
    assert [reason.split()[0] for reason in quality["reasons"]] == ["identity", "neck"]
    unedited = result.debug_images["aligned"] if return_kind is ReturnKind.ALIGNED else photo
    assert np.array_equal(result.image, unedited)
    assert quality["changed_area"]["pixels"] > 0, "the facts describe the refused edit"


@needs_portraits
def test_report_policy_returns_the_edit_and_fail_policy_raises_low_quality(tiny_registry: ModelRegistry) -> None:
    photo = input_rgb(PORTRAITS[2])
    strict = QualityGate(min_identity=-1.0, max_neck_lpips=0.0)
    reported = run_with_gate(tiny_registry, replace(strict, policy=QualityPolicy.REPORT), photo)
    assert reported.report["quality"]["passed"] is False and reported.report["quality"]["returned"] == "edited"
    assert not np.array_equal(reported.image, photo)
    with pytest.raises(LowQualityError) as failed:
        run_with_gate(tiny_registry, replace(strict, policy=QualityPolicy.FAIL), photo)
    assert failed.value.code == "low_quality" and "CHINFIX_MAX_NECK_LPIPS" in failed.value.message
    assert failed.value.report["quality"]["passed"] is False and "timings_ms" in failed.value.report


@needs_portraits
def test_a_failed_gate_fails_the_job_with_low_quality_and_keeps_the_report(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]))
    env = {**isolated_env, **FEW_STEPS, "CHINFIX_QUALITY_POLICY": "fail", "CHINFIX_MAX_NECK_LPIPS": "0"}
    with api_and_worker(env, tmp_path) as (base_url, worker):
        job = wait_for_job(base_url, submit(base_url, PORTRAITS[3], refine="warp"), {"succeeded", "failed"})
        assert job["status"] == "failed", (job, worker.output())
        assert job["error"]["code"] == "low_quality" and "CHINFIX_MAX_NECK_LPIPS=0" in job["error"]["message"]
        assert job["report"]["quality"]["passed"] is False
        assert job["report"]["quality"]["thresholds"]["max_neck_lpips"] == 0


def passing_aligned_edit(registry: ModelRegistry, photo: np.ndarray):
    """The edit of a photo's face returned as the aligned crop, with the original crop among the debug images."""
    gate = QualityGate(min_identity=-1.0, max_neck_lpips=1e9)
    return run_with_gate(registry, gate, photo, debug=True, **{"return": ReturnKind.ALIGNED})


@needs_portraits
def test_the_double_chin_probability_is_the_classifiers_on_the_original_and_the_returned_crop(
    tmp_path: Path,
) -> None:
    build_tiny_model_store(tmp_path, with_classifier=True)
    registry = ModelRegistry.load(Settings(model_dir=tmp_path, device="cpu", invert_steps=3, diffuse_steps=3))
    assert registry.double_chin_classifier is not None and registry.missing_optional == []
    result = passing_aligned_edit(registry, input_rgb(PORTRAITS[4]))
    quality = result.report["quality"]
    assert quality["unmeasured"] == {}
    probability = quality["double_chin_probability"]
    assert set(probability) == {"before", "after"}
    assert all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in probability.values())
    original_crop, edited_crop = result.debug_images["aligned"], result.image
    assert not np.array_equal(original_crop, edited_crop)
    direct = double_chin_probabilities(registry.double_chin_classifier, registry.face_parser, [original_crop, edited_crop])
    assert probability == {"before": pytest.approx(direct[0], abs=1e-4), "after": pytest.approx(direct[1], abs=1e-4)}


def logit(probability: float) -> float:
    return float(np.log(probability / (1.0 - probability)))


@needs_portraits
def test_the_probability_comes_from_the_model_stores_classifier(tmp_path: Path) -> None:
    """A classifier in the seed's file layout whose last layer ignores the image and answers 0.8 for 'double chin'."""
    store = build_tiny_model_store(tmp_path)
    classifier = DoubleChinClassifier(blocks=TINY_CLASSIFIER_BLOCKS)
    with torch.no_grad():
        classifier.network.fc.weight.zero_()
        classifier.network.fc.bias.copy_(torch.tensor([logit(0.3), logit(0.8)]))
    torch.save({"iteration": 7, "model": classifier.network.state_dict()}, store.path(DOUBLE_CHIN_CLASSIFIER))
    registry = ModelRegistry.load(Settings(model_dir=tmp_path, device="cpu", invert_steps=3, diffuse_steps=3))
    quality = passing_aligned_edit(registry, input_rgb(PORTRAITS[0])).report["quality"]
    assert quality["double_chin_probability"] == {"before": 0.8, "after": 0.8} and quality["unmeasured"] == {}
