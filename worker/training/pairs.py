"""Stage 4: pairs of W+ codes of one synthetic face, with and without a double chin (the seed's step 1 and 2).

For each sample scored as a double chin (probability above `threshold`, the seed's classifier cut 0.95):
1. coarse edit: wp + alpha * n (alpha -4, n the coarse W normal on every layer), then style mixing: layers 7..17
   become 0.2 * edited + 0.8 * original, so mostly the coarse layers move;
2. the neck region M of the ORIGINAL face (the seed's `get_neck_mask`), dilated 15 and blurred 25 (at 1024 px)
   into the soft mask D;
3. diffuse: from the original code, fit the original outside D and the coarse-edited face inside M (pixel loss
   outside D plus the seed's VGG16 feature error, 100 Adam steps at lr 0.01, perceptual weight 5e-5);
4. the pair is (wp, the diffused code). A face without a region (no face or neck found) is skipped and recorded.

The pipeline owns the edit, mask and diffuse code; `coarse_edit`, `neck_region`, `region_masks` and `diffuse_code`
below are the only places this stage calls it. Samples are grouped into shards, the unit of resumption and of the queue
(`worker.training.queue`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.pipeline.edit import COARSE_ALPHA, COARSE_MIX_RATIO, KEPT_FINE_LAYERS
from worker.pipeline.masks import WARP_SOFT_MASK
from worker.pipeline.refine import TRAINING_DIFFUSE
from worker.training.directory import TrainingDir, TrainingError, load_npy, progress_bar, save_json, save_npy
from worker.training.sample import check_generator

if TYPE_CHECKING:
    from worker.registry import ModelRegistry

SEED_CHIN_THRESHOLD = 0.95
"""The seed's classifier called a face double-chinned at probability > 0.95 (classify.py check_double_chin)."""
DEFAULT_SHARD_SIZE = 8
"""Samples per shard: the unit of resumption, and how long a queued shard keeps a worker from photos."""

RegionFunction = Callable[[np.ndarray, "ModelRegistry"], "np.ndarray | None"]
"""region(image SxSx3 uint8 RGB, registry) → SxS bool region to re-synthesise, or None when there is none."""


@dataclass(frozen=True)
class PairConfig:
    """The seed's numbers (remove_double_chin_step1.py and step2.py) as defaults, from the pipeline's constants."""

    alpha: float = COARSE_ALPHA
    mix_layers: tuple[int, ...] = KEPT_FINE_LAYERS
    mix_ratio: float = COARSE_MIX_RATIO
    dilate_at_1024: int = WARP_SOFT_MASK.dilate_at_1024
    blur_at_1024: int = WARP_SOFT_MASK.blur_at_1024
    diffuse_steps: int = TRAINING_DIFFUSE.steps
    diffuse_lr: float = TRAINING_DIFFUSE.learning_rate
    perceptual_weight: float = TRAINING_DIFFUSE.perceptual_weight
    region: str = "worker.training.pairs:neck_region"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PairConfig:
        return cls(**{**values, "mix_layers": tuple(values["mix_layers"])})


@dataclass
class ShardResult:
    """with_codes, without_codes: n x num_ws x w_dim float32; index: the n samples they came from;
    skipped: the samples whose face had no region."""

    with_codes: np.ndarray
    without_codes: np.ndarray
    index: np.ndarray
    skipped: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {"with": self.with_codes, "without": self.without_codes, "index": self.index, "skipped": self.skipped}


# --- the seam to the pipeline -------------------------------------------------------------------------------------


def coarse_edit(wp: np.ndarray, coarse_normal: np.ndarray, config: PairConfig) -> np.ndarray:
    """1 x num_ws x w_dim → the coarse-edited, style-mixed code (1 x num_ws x w_dim float32)."""
    from worker.pipeline.edit import coarse_edit as pipeline_coarse_edit

    mixed = tuple(layer for layer in config.mix_layers if layer < wp.shape[1])
    return pipeline_coarse_edit(wp, coarse_normal, config.alpha, mixed, config.mix_ratio)


def neck_region(image_rgb: np.ndarray, registry: ModelRegistry) -> np.ndarray | None:
    """The seed's region (remove_double_chin_step1.py's get_neck_mask): the neck class and the skin below the
    landmarks' line, the jaw cut out, dilated 7 at 512 px; None when no face is found (the seed needs its chin)."""
    from worker.pipeline.masks import neck_masks

    faces = registry.landmarker.detect(image_rgb) if registry.landmarker is not None else []
    if not faces:
        return None
    box = max(faces, key=lambda face: (face.right - face.left) * (face.bottom - face.top))
    neck = neck_masks(image_rgb, registry.landmarker.landmarks(image_rgb, box), registry.face_parser).neck_mask
    return neck if neck.any() else None


def region_masks(region: np.ndarray, config: PairConfig) -> np.ndarray:
    """SxS bool region → SxS float32 soft mask D (dilate, blur; 1 on the region)."""
    from worker.pipeline.masks import SoftMaskConfig, soft_neck_mask

    return soft_neck_mask(region, SoftMaskConfig(dilate_at_1024=config.dilate_at_1024, blur_at_1024=config.blur_at_1024))


def diffuse_code(
    registry: ModelRegistry, wp: np.ndarray, edited_rgb: np.ndarray, original_rgb: np.ndarray,
    region: np.ndarray, soft_mask: np.ndarray, config: PairConfig,
) -> np.ndarray:  # fmt: skip
    """The diffused code, 1 x num_ws x w_dim float32."""
    from worker.pipeline.refine import DiffuseConfig, refine_diffuse

    diffuse = DiffuseConfig(
        steps=config.diffuse_steps, learning_rate=config.diffuse_lr, perceptual_weight=config.perceptual_weight
    )
    result = refine_diffuse(
        registry.generator, wp, edited_rgb, original_rgb, region, soft_mask, registry.diffuse_perceptual, diffuse
    )
    return result.wp


# --- pairs ----------------------------------------------------------------------------------------------------------


def region_function(path: str) -> RegionFunction:
    from worker.registry import import_function

    try:
        return import_function(path)
    except (ImportError, AttributeError, ValueError) as error:
        raise TrainingError(f"cannot import the region function {path!r}: {error}") from None


def require_pair_models(registry: ModelRegistry) -> None:
    """Pairs need the generator and the diffuse's perceptual model (the region function may need more)."""
    from worker.registry import DIFFUSE_PERCEPTUAL, GENERATOR

    missing = [name for name, model in ((GENERATOR, registry.generator),
                                        (DIFFUSE_PERCEPTUAL, registry.diffuse_perceptual)) if model is None]  # fmt: skip
    if missing:
        raise TrainingError(f"pairs need the model(s) {', '.join(missing)}: `chinfix models pull {' '.join(missing)}`")


def make_pair(
    registry: ModelRegistry, wp: np.ndarray, coarse_normal: np.ndarray, config: PairConfig, region: RegionFunction
) -> np.ndarray | None:
    """wp: 1 x num_ws x w_dim → the same face's code without the chin, or None when it has no region."""
    from worker.pipeline.portrait import synthesise

    device = registry.generator.w_avg.device
    original_rgb = synthesise(registry.generator, wp, device)
    mask = region(original_rgb, registry)
    if mask is None or not mask.any():
        return None
    edited_rgb = synthesise(registry.generator, coarse_edit(wp, coarse_normal, config), device)
    return diffuse_code(registry, wp, edited_rgb, original_rgb, mask, region_masks(mask, config), config)


def make_shard(
    registry: ModelRegistry,
    wp: np.ndarray,
    indices: np.ndarray,
    coarse_normal: np.ndarray,
    config: PairConfig,
    on_pair: Callable[[], None] = lambda: None,
) -> ShardResult:
    """wp: n x num_ws x w_dim codes of the samples `indices` → their pairs."""
    region = region_function(config.region)
    withs, withouts, kept, skipped = [], [], [], []
    for code, index in zip(wp, indices, strict=True):
        without = make_pair(registry, code[None], coarse_normal, config, region)
        if without is None:
            skipped.append(index)
        else:
            withs.append(code)
            withouts.append(without[0])
            kept.append(index)
        on_pair()
    empty = np.zeros((0, *wp.shape[1:]), np.float32)
    return ShardResult(
        with_codes=np.stack(withs).astype(np.float32) if withs else empty,
        without_codes=np.stack(withouts).astype(np.float32) if withouts else empty,
        index=np.array(kept, np.int64),
        skipped=np.array(skipped, np.int64),
    )


def save_shard(directory: TrainingDir, shard: int, result: ShardResult) -> None:
    # "without" last: `pair_shard_done` needs all four, and fine reads shards by their "without" file
    for kind in ("index", "skipped", "with", "without"):
        save_npy(directory.pair_path(shard, kind), result.arrays()[kind])


# --- the plan -------------------------------------------------------------------------------------------------------


@dataclass
class PairPlan:
    """DIR/pairs/plan.json: which samples each shard holds, with which settings; `run_id` names its queue run."""

    shards: list[list[int]]
    config: PairConfig
    threshold: float
    run_id: str = field(default_factory=lambda: secrets.token_hex(6))

    @property
    def num_pairs(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"shards": self.shards, "config": asdict(self.config), "threshold": self.threshold, "run_id": self.run_id}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> PairPlan:
        return cls(values["shards"], PairConfig.from_dict(values["config"]), values["threshold"], values["run_id"])


def coarse_copy_path(directory: TrainingDir) -> Path:
    return directory.root / "pairs" / "coarse.npy"


def plan_pairs(
    directory: TrainingDir,
    coarse_normal: np.ndarray,
    config: PairConfig,
    threshold: float = SEED_CHIN_THRESHOLD,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> PairPlan:
    """The plan of DIR (made now, or the one a previous run made, which must have the same settings)."""
    scores = directory.load_scores()
    selected = np.flatnonzero(scores > threshold)
    shards = [selected[start : start + shard_size].tolist() for start in range(0, len(selected), shard_size)]
    plan = PairPlan(shards, config, threshold)
    if directory.plan_path.is_file():
        previous = PairPlan.from_json(json.loads(directory.plan_path.read_text()))
        same_normal = np.array_equal(load_npy(coarse_copy_path(directory)), coarse_normal)
        if (previous.shards, previous.config, previous.threshold) != (shards, config, threshold) or not same_normal:
            raise TrainingError(
                f"{directory.plan_path} was planned with other settings or another coarse boundary; "
                "use the same ones to resume, or delete DIR/pairs to start over"
            )
        return previous
    if not shards:
        raise TrainingError(f"no sample scores above {threshold}: nothing to pair (lower --threshold?)")
    save_npy(coarse_copy_path(directory), coarse_normal.astype(np.float32))
    save_json(directory.plan_path, plan.to_json())
    return plan


def load_plan(directory: TrainingDir) -> PairPlan:
    if not directory.plan_path.is_file():
        raise TrainingError(f"{directory.root} has no pair plan: run `chinfix train pairs {directory.root} --coarse ...`")
    return PairPlan.from_json(json.loads(directory.plan_path.read_text()))


def pairs_done(directory: TrainingDir, plan: PairPlan) -> int:
    return sum(len(shard) for index, shard in enumerate(plan.shards) if directory.pair_shard_done(index))


def run_pairs(registry: ModelRegistry, directory: TrainingDir, plan: PairPlan, show_progress: bool = True) -> None:
    """Every shard of the plan in this process, skipping finished ones."""
    require_pair_models(registry)
    check_generator(directory.manifest(), registry.generator, directory.root)
    coarse_normal = load_npy(coarse_copy_path(directory))
    with progress_bar(plan.num_pairs, "pairs", pairs_done(directory, plan), unit="pair", enabled=show_progress) as bar:
        for shard, indices in enumerate(plan.shards):
            if directory.pair_shard_done(shard):
                continue
            indices = np.array(indices, np.int64)
            result = make_shard(
                registry, directory.load_wp(indices), indices, coarse_normal, plan.config, lambda: bar.update(1)
            )
            save_shard(directory, shard, result)
