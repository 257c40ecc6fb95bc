"""The model registry: what a worker loads once, and how it reports what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chinfix.errors import PipelineError
from chinfix.settings import Settings
from tests.tiny_models import build_tiny_model_store
from worker.pipeline.invert import w_statistics
from worker.registry import ModelRegistry, generator_precision


def test_fp16_is_nvidias_setting_on_cuda_and_float32_elsewhere() -> None:
    assert generator_precision("fp16", torch.device("cuda")) == (4, True)
    assert generator_precision("fp16", torch.device("cpu")) == (0, False)
    assert generator_precision("fp32", torch.device("cuda")) == (0, False)


def test_a_complete_store_loads_every_model(tmp_path: Path) -> None:
    build_tiny_model_store(tmp_path, with_parser=False)
    registry = ModelRegistry.load(Settings(model_dir=tmp_path, device="cpu", precision="fp16"))
    assert registry.missing == [] and registry.missing_optional == ["face_parsing_bisenet", "double_chin_classifier"]
    assert registry.double_chin_classifier is None
    registry.require_complete()
    assert registry.generator is not None and registry.fine_boundary.num_ws == registry.generator.num_ws
    assert not any(block.use_fp16 for block in registry.generator.synthesis.blocks())
    # The projector's statistics of W, once per loaded generator rather than per job.
    expected = w_statistics(registry.generator)
    assert torch.equal(registry.w_stats.w_avg, expected.w_avg) and registry.w_stats.w_std == expected.w_std
    assert registry.describe() == {
        "device": "cpu",
        "missing_models": [],
        "missing_optional_models": ["face_parsing_bisenet", "double_chin_classifier"],
        "unreadable_models": {},
    }


def test_the_optional_classifier_loads_when_present_and_an_unreadable_one_leaves_the_worker_ready(tmp_path: Path) -> None:
    store = build_tiny_model_store(tmp_path, with_classifier=True)
    registry = ModelRegistry.load(Settings(model_dir=tmp_path, device="cpu"))
    assert registry.double_chin_classifier is not None and registry.describe()["missing_optional_models"] == []
    assert registry.double_chin_classifier.network.fc.out_features == 2

    store.path("double_chin_classifier").write_bytes(b"not a checkpoint")
    registry = ModelRegistry.load(Settings(model_dir=tmp_path, device="cpu"))
    registry.require_complete()
    assert registry.double_chin_classifier is None and registry.missing_optional == ["double_chin_classifier"]
    assert "double_chin_classifier" in registry.describe()["unreadable_models"]


def test_an_empty_store_names_every_required_model(tmp_path: Path) -> None:
    registry = ModelRegistry.load(Settings(model_dir=tmp_path, device="cpu"))
    assert registry.missing == [
        "stylegan2_ffhq", "fine_boundary", "fine_intercept", "vgg16_imagenet", "lpips_vgg_lin", "vgg16_perceptual"
    ]
    with pytest.raises(PipelineError) as raised:
        registry.require_complete()
    assert raised.value.code == "model_missing"
    pull = "chinfix models pull stylegan2_ffhq fine_boundary fine_intercept vgg16_imagenet lpips_vgg_lin vgg16_perceptual"
    assert pull in raised.value.message


def test_an_unreadable_file_is_missing_with_its_reason(tmp_path: Path) -> None:
    store = build_tiny_model_store(tmp_path, with_parser=False)
    store.path("stylegan2_ffhq").write_bytes(b"not a checkpoint")
    registry = ModelRegistry.load(Settings(model_dir=tmp_path, device="cpu"))
    assert registry.missing == ["stylegan2_ffhq"] and set(registry.unreadable) == {"stylegan2_ffhq"}
    assert registry.describe()["unreadable_models"]["stylegan2_ffhq"]
    with pytest.raises(PipelineError) as raised:
        registry.require_complete()
    assert "delete the unreadable file(s) of stylegan2_ffhq" in raised.value.message
    assert "chinfix models pull stylegan2_ffhq" in raised.value.message
