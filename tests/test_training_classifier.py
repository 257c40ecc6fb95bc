"""The seed's double-chin classifier: its published checkpoint layout loads, its input band, training and resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.models.bisenet import FaceClass
from worker.training.classifier import (
    DoubleChinClassifier,
    TrainConfig,
    band_at_side,
    blocks_of,
    centre_square,
    load_classifier,
    neck_band_512,
    read_classifier_state,
    train_classifier,
)

# shapes torchvision's resnext50_32x4d gives these keys (groups 32, width 4 per group, a 2-way fc as the seed's)
SEED_LAYOUT = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (128, 64, 1, 1),
    "layer1.0.conv2.weight": (128, 4, 3, 3),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.running_var": (256,),
    "layer2.0.conv2.weight": (256, 8, 3, 3),
    "layer3.5.conv3.weight": (1024, 512, 1, 1),
    "layer4.2.bn3.num_batches_tracked": (),
    "fc.weight": (2, 2048),
}


def test_the_seeds_checkpoint_layout_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = DoubleChinClassifier().eval()
    state = reference.network.state_dict()
    assert {key: tuple(state[key].shape) for key in SEED_LAYOUT} == SEED_LAYOUT
    assert blocks_of(state) == (3, 4, 6, 3)
    # the seed saved {'iteration', 'model'}; a multi-GPU run's keys carry DataParallel's "module." prefix
    torch.save({"iteration": 1234, "model": {f"module.{key}": value for key, value in state.items()}},
               tmp_path / "classification_model.pth")  # fmt: skip
    loaded = load_classifier(tmp_path / "classification_model.pth")
    images, masks = torch.rand(2, 3, 64, 64), torch.ones(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images, masks), reference(images, masks))
        outputs = loaded(images, masks)
    assert outputs.shape == (2, 2) and ((outputs > 0) & (outputs < 1)).all()


def test_a_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    torch.save({"iteration": 1, "model": {"fc.weight": torch.zeros(2, 512)}}, tmp_path / "other.pth")
    with pytest.raises(Exception, match="not a ResNeXt-50 32x4d"):
        load_classifier(tmp_path / "other.pth")


def test_training_checkpoints_every_epoch_and_resumes(tmp_path: Path) -> None:
    """Mechanics only (a ResNeXt-50 learning anything takes far longer than a test): every epoch steps the weights,
    writes the checkpoint and the history; a second run continues at the next epoch."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    count, side = 8, 32
    labels = torch.from_numpy(rng.integers(0, 2, count))
    images = torch.from_numpy(rng.uniform(0.0, 1.0, (count, 3, side, side)).astype(np.float32))
    masks = torch.zeros(count, 1, side, side)
    masks[:, :, side // 2 :] = 1.0
    model = DoubleChinClassifier(blocks=(1, 1, 1, 1), input_size=side)
    initial = {key: value.clone() for key, value in model.network.state_dict().items()}
    config = TrainConfig(epochs=2, batch_size=4, split_ratio=0.75)
    output = tmp_path / "classifier.safetensors"
    accuracies = train_classifier(model, images, masks, labels, config, output)
    assert len(accuracies) == 2 and all(0.0 <= value <= 1.0 for value in accuracies)
    state, metadata = read_classifier_state(output)
    assert metadata == {"input_size": str(side), "epoch": "2"} and blocks_of(state) == (1, 1, 1, 1)
    assert not torch.equal(state["fc.weight"], initial["fc.weight"])
    assert not torch.equal(state["layer1.0.bn1.running_mean"], initial["layer1.0.bn1.running_mean"])

    resumed = load_classifier(output).requires_grad_(True)
    assert resumed.input_size == side
    # under the model store's name (the seed's classification_model.pth) it loads as well
    output.with_name("classification_model.pth").write_bytes(output.read_bytes())
    assert load_classifier(output.with_name("classification_model.pth")).input_size == side
    assert len(train_classifier(resumed, images, masks, labels, replace(config, epochs=3), output, first_epoch=3)) == 1
    history = json.loads(output.with_suffix(".json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert read_classifier_state(output)[1]["epoch"] == "3"


def test_the_neck_band_is_found_at_512_and_halved_for_the_256_px_input() -> None:
    """The seed's get_simple_neck_mask: rows from the neck's centre minus 0.65 of its height down, at the parser's
    512 px; its Dataset then resizes the 0/255 band to 256 with PIL's bilinear filter and keeps anything above 0."""
    class_map = np.zeros((512, 512), np.uint8)
    class_map[300:401, 200:300] = FaceClass.NECK
    class_map[100:300, 150:350] = FaceClass.SKIN
    band = neck_band_512(class_map)
    first_row = 350 - int(100 * 1.3) // 2
    assert band[first_row:].all() and not band[:first_row].any()
    at_256 = band_at_side(band, 256)
    rows = np.flatnonzero(at_256.any(axis=1))
    assert at_256.dtype == np.float32 and at_256[rows].all()
    assert rows[-1] == 255 and abs(rows[0] - first_row / 2) <= 1.5, "the band starts half as far down at 256 px"
    assert not neck_band_512(np.zeros((512, 512), np.uint8)).any(), "no neck, no band (the classifier sees zeros)"


def test_a_face_that_is_not_square_is_cut_to_its_centred_square() -> None:
    image = np.arange(6 * 10).reshape(6, 10)
    assert np.array_equal(centre_square(image), image[:, 2:8])
    assert np.array_equal(centre_square(image.T), image.T[2:8])
