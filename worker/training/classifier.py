"""The seed's double-chin classifier: ResNeXt-50 32x4d on the neck band of a 256 px face, two sigmoid outputs.

As the seed's classifier/ (written here, no torchvision): torchvision's ResNeXt-50 32x4d layout with a 2-way fc;
the input is the RGB face in [0, 1] (no mean/std normalisation) multiplied by a band mask: every row from a little
above the parsed neck's top (its centre minus 0.65 of its height) down to the bottom of the image, all zeros when
the parser finds no neck. Outputs are sigmoids of the two logits ([no double chin, double chin]), trained with
BCE against one-hot labels, Adam lr 1e-4, betas (0, 0.9), batch 4, random horizontal flips. The seed called a
face double-chinned when output[1] > 0.95 (`worker.training.pairs.SEED_CHIN_THRESHOLD`).

Checkpoints: `.safetensors` with torchvision's key names, or the seed's published `classification_model.pth`
(a dict {'iteration', 'model': state dict}, read without executing pickled code).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch import nn

from worker.training.directory import TrainingError, progress_bar, save_json

if TYPE_CHECKING:
    from chinfix.settings import Settings
    from worker.training.score import SampleBatch, Scorer

RESNEXT50_BLOCKS = (3, 4, 6, 3)
GROUPS = 32
WIDTH_PER_GROUP = 4
EXPANSION = 4
SEED_INPUT_SIZE = 256
NECK_BAND_SCALE = 1.3
"""The seed's band starts half of 1.3 neck heights above the neck's centre (get_simple_neck_mask)."""
LABELS = ("without", "with")


class Bottleneck(nn.Module):
    """1x1 → grouped 3x3 (stride here, as torchvision) → 1x1, with a projection shortcut where shapes change."""

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        width = planes * WIDTH_PER_GROUP * GROUPS // 64
        out_channels = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=GROUPS, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ResNeXt(nn.Module):
    """ResNeXt 32x4d (torchvision's module and parameter names); `blocks` per stage, (3, 4, 6, 3) is the -50."""

    def __init__(self, num_classes: int = 2, blocks: Sequence[int] = RESNEXT50_BLOCKS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers = []
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(Bottleneck(in_channels, planes, stride))
                in_channels = planes * EXPANSION
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DoubleChinClassifier(nn.Module):
    """(N x 3 x S x S images in [0, 1], N x 1 x S x S band masks) → N x 2 sigmoid outputs."""

    def __init__(self, blocks: Sequence[int] = RESNEXT50_BLOCKS, input_size: int = SEED_INPUT_SIZE) -> None:
        super().__init__()
        self.network = ResNeXt(num_classes=len(LABELS), blocks=blocks)
        self.blocks = tuple(blocks)
        self.input_size = input_size

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(images * masks))


def blocks_of(state_dict: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks per stage, read from the key names (layerS.B.conv1.weight)."""
    return tuple(
        len({key.split(".")[1] for key in state_dict if key.startswith(f"layer{stage}.")}) for stage in range(1, 5)
    )


def is_safetensors(path: Path) -> bool:
    """By content, so `chinfix train classifier`'s file also serves under the model store's `.pth` name: a
    safetensors file opens with its header's length (8 bytes, little-endian) and then the header's JSON."""
    with path.open("rb") as file:
        opening = file.read(9)
    return len(opening) == 9 and opening[8:] == b"{" and int.from_bytes(opening[:8], "little") < path.stat().st_size


def read_classifier_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(torchvision-named state dict, metadata) from a safetensors file or the seed's .pth dict."""
    if is_safetensors(path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, dict(file.metadata() or {})
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainingError(f"{path} is not a readable classifier checkpoint: {error}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise TrainingError(f"{path} holds no state dict (the seed's file is a dict with a 'model' entry)")
    # the seed wrapped the network in nn.DataParallel when it trained on several GPUs
    return {key.removeprefix("module."): value for key, value in state.items()}, {}


def load_classifier(path: Path, device: torch.device | str = "cpu") -> DoubleChinClassifier:
    state, metadata = read_classifier_state(path)
    model = DoubleChinClassifier(blocks_of(state), int(metadata.get("input_size", SEED_INPUT_SIZE)))
    try:
        model.network.load_state_dict(state)
    except RuntimeError as error:
        raise TrainingError(f"{path} is not a ResNeXt-50 32x4d double-chin classifier: {error}") from None
    return model.eval().requires_grad_(False).to(device)


def save_classifier(model: DoubleChinClassifier, path: Path, epoch: int) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    state = {key: value.detach().cpu().contiguous() for key, value in model.network.state_dict().items()}
    save_file(state, str(partial), metadata={"input_size": str(model.input_size), "epoch": str(epoch)})
    partial.replace(path)


# --- inputs ---------------------------------------------------------------------------------------------------------


def neck_band_512(class_map_512: np.ndarray) -> np.ndarray:
    """512x512 class map → 512x512 bool: every row from a little above the parsed neck to the bottom (the seed's
    `get_simple_neck_mask`), nothing when there is no neck."""
    from worker.models.bisenet import FaceClass

    band = np.zeros(class_map_512.shape, bool)
    rows = np.flatnonzero((class_map_512 == FaceClass.NECK).any(axis=1))
    if rows.size:
        top, bottom = int(rows[0]), int(rows[-1])
        centre, height = (top + bottom) // 2, int((bottom - top) * NECK_BAND_SCALE)
        band[max(0, centre - height // 2) :] = True
    return band


def band_at_side(band_512: np.ndarray, side: int) -> np.ndarray:
    """512x512 bool → side x side float32 0/1 as the seed's Dataset resizes its mask: scipy's imresize (PIL's
    BILINEAR) of the 0/255 mask, then anything above 0."""
    from worker.pipeline.masks import pil_bilinear_resize

    return (pil_bilinear_resize(band_512.astype(np.uint8) * 255, side) > 0).astype(np.float32)


def neck_band_mask(parser: nn.Module, image_rgb: np.ndarray) -> np.ndarray:
    """SxSx3 uint8 RGB → SxS float32 band mask, found at the parser's 512 px."""
    from worker.pipeline.masks import parse_face

    return band_at_side(neck_band_512(parse_face(parser, image_rgb)), image_rgb.shape[0])


def centre_square(image: np.ndarray) -> np.ndarray:
    """HxWx... → the centred SxS... crop, S = min(H, W) (the seed's Dataset crops before resizing)."""
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return image[top : top + side, left : left + side]


def classifier_inputs(parser: nn.Module, images_rgb: Sequence[np.ndarray], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces (each HxWx3 uint8 RGB) → (N x 3 x size x size images in [0, 1], N x 1 x size x size band masks),
    cut to a centred square and resized as the seed's Dataset does (scipy's imresize: PIL's BILINEAR)."""
    from worker.pipeline.masks import pil_bilinear_resize

    resized = [pil_bilinear_resize(centre_square(image), size) for image in images_rgb]
    masks = np.stack([neck_band_mask(parser, image) for image in resized])[:, None]
    images = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0
    return images, torch.from_numpy(masks)


def double_chin_probabilities(
    classifier: DoubleChinClassifier, parser: nn.Module, images_rgb: Sequence[np.ndarray]
) -> np.ndarray:
    """N float32: the classifier's double-chin probability (its second output) of each HxWx3 uint8 RGB face."""
    device = next(classifier.parameters()).device
    images, masks = classifier_inputs(parser, images_rgb, classifier.input_size)
    with torch.no_grad():
        return classifier(images.to(device), masks.to(device))[:, 1].cpu().numpy()


def classifier_scorer(classifier: DoubleChinClassifier, parser: nn.Module) -> Scorer:
    """Double-chin probability of each synthesised face."""

    def score(batch: SampleBatch) -> np.ndarray:
        return double_chin_probabilities(classifier, parser, list(batch.images()))

    return score


def load_parser(settings: Settings, device: torch.device | str) -> nn.Module:
    from model_store.store import ModelStore
    from worker.models.bisenet import load_bisenet
    from worker.registry import FACE_PARSING

    store = ModelStore(settings.model_dir)
    if store.missing([FACE_PARSING]):
        raise TrainingError(f"the classifier's input needs the face parser: `chinfix models pull {FACE_PARSING}`")
    return load_bisenet(store.path(FACE_PARSING), device)


def classifier_scorer_from_files(path: Path, settings: Settings, device: torch.device | str) -> Scorer:
    return classifier_scorer(load_classifier(path, device), load_parser(settings, device))


# --- training -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 4
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.9)
    split_ratio: float = 0.9
    input_size: int = SEED_INPUT_SIZE
    seed: int = 0


def labelled_photos(data: Path) -> list[tuple[Path, int]]:
    """(photo, label) from DATA/with/* (1) and DATA/without/* (0), or from a CSV of `path,label` rows
    (paths relative to the CSV's folder)."""
    if data.is_dir():
        photos = [(path, LABELS.index(folder)) for folder in LABELS
                  for path in sorted((data / folder).glob("*")) if path.suffix.lower() in (".jpg", ".jpeg", ".png")]  # fmt: skip
    elif data.is_file():
        with data.open(newline="") as file:
            photos = [(data.parent / row[0].strip(), int(float(row[1]))) for row in csv.reader(file)
                      if row and row[0].strip().lower() not in ("path", "image")]  # fmt: skip
    else:
        raise TrainingError(f"{data}: no such folder or CSV")
    if len({label for _, label in photos}) < 2:
        raise TrainingError(f"{data} needs photos of both kinds (with/ and without/, or labels 1 and 0)")
    return photos


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise TrainingError(f"{path} is not a readable image")
    return image[:, :, ::-1]


def accuracy(model: DoubleChinClassifier, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(images, masks).argmax(dim=1)
    return float((predicted == labels).float().mean())


def train_classifier(
    model: DoubleChinClassifier,
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    output: Path,
    first_epoch: int = 1,
) -> list[float]:
    """Train on inputs prepared by `classifier_inputs` (labels N int64); checkpoint after every epoch.
    Returns the validation accuracy of each epoch run (NaN where nothing was held out)."""
    rng = np.random.default_rng(config.seed)
    order = np.random.default_rng(config.seed).permutation(len(labels))
    train_count = int(len(labels) * config.split_ratio)
    train, held_out = order[:train_count], order[train_count:]
    device = next(model.parameters()).device
    targets = nn.functional.one_hot(labels, len(LABELS)).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=config.betas)
    accuracies = []
    history_path = output.with_suffix(".json")
    history = json.loads(history_path.read_text()) if first_epoch > 1 and history_path.is_file() else []
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        with progress_bar(len(train), f"epoch {epoch}/{config.epochs}", unit="photo") as bar:
            for start in range(0, len(train), config.batch_size):
                batch = train[start : start + config.batch_size]
                flip = torch.from_numpy(rng.random(len(batch)) < 0.5)
                batch_images = torch.where(flip[:, None, None, None], images[batch].flip(-1), images[batch])
                batch_masks = torch.where(flip[:, None, None, None], masks[batch].flip(-1), masks[batch])
                loss = nn.functional.binary_cross_entropy(
                    model(batch_images.to(device), batch_masks.to(device)), targets[batch].to(device)
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(len(batch))
                bar.set_postfix(loss=f"{loss.item():.4f}")
        rng.shuffle(train)
        value = accuracy(model, images[held_out].to(device), masks[held_out].to(device), labels[held_out].to(device)) \
            if len(held_out) else float("nan")  # fmt: skip
        accuracies.append(value)
        bar.write(f"epoch {epoch}: validation accuracy {value:.4f} on {len(held_out)} photos")
        history.append({"epoch": epoch, "validation_accuracy": value})
        save_classifier(model, output, epoch)
        save_json(history_path, history)
    return accuracies


def train_classifier_command(
    data: Path, output: Path, config: TrainConfig, settings: Settings, init: Path | None, device: torch.device
) -> list[float]:
    """`chinfix train classifier`: resumes from OUTPUT when it exists (its epoch is in its metadata)."""
    photos = labelled_photos(data)
    first_epoch = 1
    if output.is_file():
        model = load_classifier(output, device)
        first_epoch = int(read_classifier_state(output)[1].get("epoch", 0)) + 1
    elif init is not None:
        model = load_classifier(init, device)
    else:
        model = DoubleChinClassifier(input_size=config.input_size).to(device)
    model.input_size = config.input_size
    parser = load_parser(settings, device)
    images, masks = classifier_inputs(parser, [read_rgb(path) for path, _ in photos], config.input_size)
    labels = torch.tensor([label for _, label in photos], dtype=torch.int64)
    model.requires_grad_(True)
    return train_classifier(model, images, masks, labels, config, output, first_epoch)
