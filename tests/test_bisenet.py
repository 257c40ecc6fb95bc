"""BiSeNet face parsing: the public checkpoint's key layout, safe loading, and the forward pass."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError
from tests.parsing_fixtures import random_bisenet_state_dict, save_random_bisenet
from worker.models.bisenet import NUM_CLASSES, BiSeNet, load_bisenet


def _official_layout() -> dict[str, tuple[int, ...]]:
    """Key → shape of zllrunning/face-parsing.PyTorch's `79999_iter.pth`, transcribed from its
    model.py and resnet.py (independently of worker.models.bisenet), BatchNorm counters left out."""
    layout: dict[str, tuple[int, ...]] = {}

    def batch_norm(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{prefix}.{name}"] = (channels,)

    def conv_bn_relu(prefix: str, cin: int, cout: int, kernel: int) -> None:
        layout[f"{prefix}.conv.weight"] = (cout, cin, kernel, kernel)
        batch_norm(f"{prefix}.bn", cout)

    layout["cp.resnet.conv1.weight"] = (64, 3, 7, 7)
    batch_norm("cp.resnet.bn1", 64)
    for stage, (cin, cout) in enumerate([(64, 64), (64, 128), (128, 256), (256, 512)], start=1):
        for block in (0, 1):
            prefix = f"cp.resnet.layer{stage}.{block}"
            block_in = cin if block == 0 else cout
            layout[f"{prefix}.conv1.weight"] = (cout, block_in, 3, 3)
            batch_norm(f"{prefix}.bn1", cout)
            layout[f"{prefix}.conv2.weight"] = (cout, cout, 3, 3)
            batch_norm(f"{prefix}.bn2", cout)
            if block == 0 and cin != cout:
                layout[f"{prefix}.downsample.0.weight"] = (cout, cin, 1, 1)
                batch_norm(f"{prefix}.downsample.1", cout)
    for name, cin in (("arm16", 256), ("arm32", 512)):
        conv_bn_relu(f"cp.{name}.conv", cin, 128, 3)
        layout[f"cp.{name}.conv_atten.weight"] = (128, 128, 1, 1)
        batch_norm(f"cp.{name}.bn_atten", 128)
    conv_bn_relu("cp.conv_head32", 128, 128, 3)
    conv_bn_relu("cp.conv_head16", 128, 128, 3)
    conv_bn_relu("cp.conv_avg", 512, 128, 1)
    conv_bn_relu("ffm.convblk", 256, 256, 1)
    layout["ffm.conv1.weight"] = (64, 256, 1, 1)
    layout["ffm.conv2.weight"] = (256, 64, 1, 1)
    for name, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        conv_bn_relu(f"{name}.conv", cin, mid, 3)
        layout[f"{name}.conv_out.weight"] = (NUM_CLASSES, mid, 1, 1)
    return layout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_bisenet(tmp_path_factory.mktemp("bisenet") / "79999_iter.pth", seed=3)


def test_state_dict_has_the_public_checkpoints_keys_and_shapes() -> None:
    state = {k: tuple(v.shape) for k, v in BiSeNet().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert state == _official_layout()


def test_random_checkpoint_loads_exactly(checkpoint: Path) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    model = load_bisenet(checkpoint)
    assert not model.training
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key


def test_forward_gives_class_logits_at_input_size(checkpoint: Path) -> None:
    model = load_bisenet(checkpoint)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, NUM_CLASSES, 64, 96)
    assert torch.isfinite(logits).all()


def test_checkpoint_without_batchnorm_counters_loads(tmp_path: Path) -> None:
    state = {k: v for k, v in random_bisenet_state_dict(seed=1).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    loaded = load_bisenet(tmp_path / "old.pth").state_dict()
    assert torch.equal(loaded["conv_out.conv_out.weight"], state["conv_out.conv_out.weight"])


def test_wrong_layout_is_rejected(tmp_path: Path) -> None:
    state = random_bisenet_state_dict(seed=1)
    state["module.extra"] = state.pop("ffm.conv1.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match="ffm.conv1.weight"):
        load_bisenet(tmp_path / "renamed.pth")


def test_missing_file_is_model_missing(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        load_bisenet(tmp_path / "absent.pth")
    assert caught.value.code == ErrorCode.MODEL_MISSING
    assert "face_parsing_bisenet" in caught.value.message


class _FileToucher:
    """Unpickling it creates `marker`: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    torch.save({"cp.resnet.conv1.weight": _FileToucher(marker)}, tmp_path / "evil.pth")
    torch.load(tmp_path / "evil.pth", weights_only=False)  # the payload is real: a full unpickler runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError):
        load_bisenet(tmp_path / "evil.pth")
    assert not marker.exists()
