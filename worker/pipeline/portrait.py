"""The whole edit of one photo: align → invert → edit → neck mask → refine → paste back.

`edit_portrait` is what the worker, `chinfix edit` and `chinfix bench pipeline` all call. Each stage is a
function of its own module; this one only threads arrays through them, times them and reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chinfix.codes import fit_code
from chinfix.contract import EditOptions, RefineMethod, ReturnKind, Stage
from worker.models.landmarks import FaceBox
from worker.models.stylegan2 import FixedNoiseGenerator
from worker.pipeline.align import find_and_align
from worker.pipeline.compose import paste_back
from worker.pipeline.edit import KEPT_FINE_LAYERS, EditConfig, remove_double_chin
from worker.pipeline.invert import INVERSION_PRESETS, InversionConfig, noise_tensors, targets_from_rgb
from worker.pipeline.masks import (
    WARP_HARD_MASK,
    WARP_SOFT_MASK,
    HardMaskConfig,
    NeckMasks,
    SoftMaskConfig,
    neck_masks,
)
from worker.pipeline.quality import EditEvidence, QualityGate, assess_edit, unedited_quality
from worker.pipeline.refine import (
    DiffuseConfig,
    RefineResult,
    WarpConfig,
    WarpRegions,
    refine_diffuse,
    refine_none,
    refine_warp,
    rgb_from_images,
)

if TYPE_CHECKING:
    from chinfix.settings import Settings
    from worker.registry import ModelRegistry

StageProgress = Callable[[Stage, float], None]

WARP_KEPT_LAYERS: tuple[int, ...] = tuple(range(6, 18))
"""The seed keeps style layers 6..17 for the warp path (7..17 for diffuse): the warp repairs less."""


@dataclass
class EditResult:
    image: np.ndarray
    """HxWx3 uint8 RGB: the edited photo, or the edited aligned crop when the options ask for it."""
    report: dict[str, Any]
    """JSON-ready facts for the job record: faces, scores, alpha, mask source, per-stage milliseconds."""
    debug_images: dict[str, np.ndarray] = field(default_factory=dict)
    """Intermediate images by name (HxWx3 or HxW uint8), kept when the options ask for debug output."""


@dataclass(frozen=True)
class PipelineConfig:
    """The tunable parts of every stage, built from the settings once per job."""

    inversion: InversionConfig = INVERSION_PRESETS["fast"]
    edit: EditConfig = EditConfig()
    diffuse: DiffuseConfig = DiffuseConfig()
    warp: WarpConfig = WarpConfig()
    soft_mask: SoftMaskConfig = SoftMaskConfig()
    quality_gate: QualityGate = QualityGate()

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        # fp16 is the generator's own setting (NVIDIA's float16 blocks); only bf16 is an autocast of the loops
        loop_precision = "bf16" if settings.precision == "bf16" else "fp32"
        inversion = replace(INVERSION_PRESETS[settings.invert_preset], space=settings.invert_space, precision=loop_precision)
        if settings.invert_steps is not None:
            inversion = replace(inversion, steps=settings.invert_steps)
        return cls(
            inversion=inversion,
            edit=EditConfig.from_settings(settings, strength=1.0, keep_layers=KEPT_FINE_LAYERS),
            diffuse=DiffuseConfig(
                steps=settings.diffuse_steps,
                learning_rate=settings.diffuse_lr,
                perceptual_weight=settings.diffuse_perceptual_weight,
                precision=loop_precision,
            ),
            quality_gate=QualityGate.from_settings(settings),
        )

    def mask_configs(self, method: RefineMethod) -> tuple[SoftMaskConfig, HardMaskConfig]:
        """The seed's warp builds its own, narrower mask (`get_neck_blur_mask`); diffuse and none use `get_neck_mask`'s."""
        if method is RefineMethod.WARP:
            return WARP_SOFT_MASK, WARP_HARD_MASK
        return self.soft_mask, HardMaskConfig()

    def edit_config(self, options: EditOptions, num_ws: int) -> EditConfig:
        """Style layers past the generator's own count are dropped, so small test generators edit too."""
        keep = WARP_KEPT_LAYERS if options.refine is RefineMethod.WARP else KEPT_FINE_LAYERS
        keep = tuple(layer for layer in keep if layer < num_ws)
        return replace(self.edit, strength=options.strength, keep_layers=keep)


class StageClock:
    """Milliseconds per stage, for the job report."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.milliseconds: dict[str, float] = {}

    @contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.milliseconds[stage.value] = round((time.perf_counter() - start) * 1000.0, 1)


def edit_portrait(
    photo_rgb: np.ndarray,
    options: EditOptions,
    registry: ModelRegistry,
    progress: StageProgress,
    code: np.ndarray | None = None,
) -> EditResult:
    """Remove the double chin of one face in an HxWx3 uint8 RGB photo, using the registry's models.

    code: a ready-made latent code of the aligned face (`chinfix.codes.read_code`), used instead of inverting it.
    """
    registry.require_complete()
    config = PipelineConfig.from_settings(registry.settings)
    return run_pipeline(photo_rgb, options, registry, config, progress, code)


def run_pipeline(
    photo_rgb: np.ndarray,
    options: EditOptions,
    registry: ModelRegistry,
    config: PipelineConfig,
    progress: StageProgress,
    code: np.ndarray | None = None,
) -> EditResult:
    G = registry.generator
    clock = StageClock(registry.device)
    report: dict[str, Any] = {"refine": options.refine.value, "device": str(registry.device)}
    debug: dict[str, np.ndarray] = {}

    with clock.stage(Stage.ALIGN):
        progress(Stage.ALIGN, 0.0)
        found = find_and_align(photo_rgb, registry.landmarker, options.face, output_size=G.img_resolution)
        original_crop = found.aligned.image
        report.update(
            faces_found=found.faces_found,
            chosen_face=found.chosen_index,
            quad=np.round(found.aligned.transform.quad, 2).tolist(),
        )
        debug["aligned"] = original_crop

    with clock.stage(Stage.INVERT):
        progress(Stage.INVERT, 0.0)
        original_wp, generator, facts = code_of_crop(original_crop, code, registry, config.inversion, progress)
        report.update(facts)
        reconstruction = synthesise(generator, original_wp, registry.device)
        debug["reconstruction"] = reconstruction

    with clock.stage(Stage.EDIT):
        progress(Stage.EDIT, 0.0)
        edit = remove_double_chin(
            original_wp, registry.fine_boundary, config.edit_config(options, G.num_ws), registry.pose_normal
        )
        report.update(
            score_before=round(edit.score_before, 4),
            score_after=round(edit.score_after, 4),
            alpha=round(edit.alpha, 4),
            no_double_chin_detected=edit.skipped,
        )
    if edit.skipped or edit.alpha == 0.0:
        # Nothing to remove (or strength 0): the photo goes back as it came, not re-synthesised.
        report["quality"] = unedited_quality(config.quality_gate)
        report["timings_ms"] = clock.milliseconds
        image = original_crop if options.return_kind is ReturnKind.ALIGNED else photo_rgb
        return EditResult(image=image, report=report, debug_images=debug)

    with clock.stage(Stage.REFINE):
        progress(Stage.REFINE, 0.0)
        edited_crop = synthesise(generator, edit.wp, registry.device)
        debug["edited"] = edited_crop
        soft_config, hard_config = config.mask_configs(options.refine)
        original_masks = neck_masks(
            original_crop, found.landmarks_aligned, registry.face_parser, soft_config, hard_config=hard_config
        )
        soft_mask = original_masks.soft_mask
        report["mask_source"] = original_masks.source.value
        debug["soft_mask"] = np.round(soft_mask * 255).astype(np.uint8)
        refined = refine(
            options.refine, generator, registry, config, original_wp, original_crop, edited_crop, original_masks,
            found.landmarks_aligned, lambda step, total, _losses: progress(Stage.REFINE, step / total),
        )  # fmt: skip

    with clock.stage(Stage.COMPOSE):
        progress(Stage.COMPOSE, 0.0)
        if options.return_kind is ReturnKind.ALIGNED:
            image = refined.image
        else:
            image = paste_back(photo_rgb, found.aligned.transform, refined.image, soft_mask)
        progress(Stage.COMPOSE, 1.0)
    aligned = options.return_kind is ReturnKind.ALIGNED
    quality = assess_edit(registry, config.quality_gate, EditEvidence(
        original_crop=original_crop, reconstruction=reconstruction, edited_crop=refined.image, soft_mask=soft_mask,
        landmarks=found.landmarks_aligned, unedited_image=original_crop if aligned else photo_rgb, edited_image=image,
        transform=None if aligned else found.aligned.transform,
    ))  # fmt: skip
    report["quality"] = quality.report
    report["timings_ms"] = clock.milliseconds
    return EditResult(image=quality.enforce(image, report), report=report, debug_images=debug)


def code_of_crop(
    crop_rgb: np.ndarray,
    code: np.ndarray | None,
    registry: ModelRegistry,
    config: InversionConfig,
    progress: StageProgress,
) -> tuple[np.ndarray, torch.nn.Module | FixedNoiseGenerator, dict[str, Any]]:
    """The aligned SxSx3 uint8 crop's 1 x num_ws x w_dim float32 code, the generator every later stage synthesises
    with, and the report's facts: the projector's code with the noise maps it optimised for the crop (the image it
    matched), or a given code with the generator's constant noise (the code came without maps)."""
    G = registry.generator
    if code is not None:
        return fit_code(code, G.num_ws, G.w_dim), G, {"code": "given"}
    inversion = registry.inverter(
        G,
        targets_from_rgb([crop_rgb], registry.device),
        registry.perceptual,
        config,
        w_stats=registry.w_stats,
        progress=lambda step, total, _losses: progress(Stage.INVERT, step / total),
    )
    facts = {
        "code": "inverted",
        "inversion": {"space": config.space, "steps": config.steps, "final_loss": round(float(inversion.final_losses[0]), 5)},
    }
    return inversion.wp, FixedNoiseGenerator(G, noise_tensors(inversion.noise, registry.device)), facts


def refine(
    method: RefineMethod,
    generator: torch.nn.Module | FixedNoiseGenerator,
    registry: ModelRegistry,
    config: PipelineConfig,
    original_wp: np.ndarray,
    original_crop: np.ndarray,
    edited_crop: np.ndarray,
    original_masks: NeckMasks,
    landmarks_aligned: np.ndarray,
    step_progress: Callable[[int, int, np.ndarray], None],
) -> RefineResult:
    if method is RefineMethod.DIFFUSE:
        return refine_diffuse(
            generator, original_wp, edited_crop, original_crop, original_masks.neck_mask,
            original_masks.soft_mask, registry.diffuse_perceptual, config.diffuse, step_progress,
        )  # fmt: skip
    if method is RefineMethod.WARP:
        # the warp reads the edited generation's face and neck too, found the same way as the original's
        edited_landmarks = landmarks_of_generation(registry.landmarker, edited_crop, landmarks_aligned)
        soft_config, hard_config = config.mask_configs(method)
        edited_masks = neck_masks(
            edited_crop, edited_landmarks, registry.face_parser, soft_config, hard_config=hard_config
        )
        return refine_warp(
            edited_crop, original_crop, warp_regions(original_masks), warp_regions(edited_masks),
            landmarks_aligned, original_masks.soft_mask, config.warp,
        )  # fmt: skip
    return refine_none(edited_crop, original_crop, original_masks.soft_mask)


def warp_regions(masks: NeckMasks) -> WarpRegions:
    return WarpRegions(face=masks.face_region, neck=masks.neck_region)


@torch.no_grad()
def synthesise(G: torch.nn.Module | FixedNoiseGenerator, wp: np.ndarray, device: torch.device) -> np.ndarray:
    """1 x num_ws x w_dim float32 code → SxSx3 uint8 RGB, with G's noise (its own constant or fixed maps)."""
    images = G.synthesis(torch.as_tensor(wp, dtype=torch.float32, device=device), noise_mode="const")
    return rgb_from_images(images)[0]


def landmarks_of_generation(landmarker: Any, generated_rgb: np.ndarray, reference_landmarks: np.ndarray) -> np.ndarray:
    """68x2 landmarks of a generated crop, searched in the box of the original's (the face barely moves).

    Running the detector again would cost time and can miss a re-synthesised face; the aligned crop puts the
    face in the same place, so the original's landmark box is a reliable prior.
    """
    left, top = reference_landmarks.min(axis=0)
    right, bottom = reference_landmarks.max(axis=0)
    return landmarker.landmarks(generated_rgb, FaceBox(left, top, right, bottom, score=1.0))
