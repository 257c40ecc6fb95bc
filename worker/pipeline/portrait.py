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
from chinfix.contract import EditOptions, ErrorCode, QualityPolicy, RefineMethod, ReturnKind, Stage
from chinfix.errors import ChinfixError
from worker.models.landmarks import FaceBox
from worker.models.stylegan2 import FixedNoiseGenerator
from worker.pipeline.align import (
    AlignedFace,
    FaceLandmarks,
    align_face,
    choose_faces,
    detect_faces_any_rotation,
    ffhq_quad,
    landmarks_in_aligned,
    turned_clockwise,
)
from worker.pipeline.compose import FacePaste, paste_back_faces
from worker.pipeline.edit import KEPT_FINE_LAYERS, EditConfig, remove_double_chin
from worker.pipeline.invert import INVERSION_PRESETS, InversionConfig, loop_precision, noise_tensors, targets_from_rgb
from worker.pipeline.masks import (
    WARP_HARD_MASK,
    WARP_SOFT_MASK,
    HardMaskConfig,
    NeckMasks,
    SoftMaskConfig,
    neck_masks,
)
from worker.pipeline.quality import (
    EditEvidence,
    QualityAssessment,
    QualityGate,
    assess_edit,
    unedited_quality,
)
from worker.pipeline.refine import (
    DiffuseConfig,
    DiffuseCrop,
    RefineResult,
    WarpConfig,
    WarpRegions,
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
    photo_mask: np.ndarray | None = None
    """HxW float32 0..1 in photo pixels: how much of the edit each pixel took (None: nothing was edited)."""
    inversion: PortraitInversion | None = None
    """What align and invert found, for re-edits of the same photo (None from pipelines that do not invert)."""


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
        precision = loop_precision(settings.precision)
        inversion = replace(
            INVERSION_PRESETS[settings.invert_preset],
            space=settings.invert_space,
            precision=precision,
            capture=settings.capture,
        )
        if settings.invert_steps is not None:
            inversion = replace(inversion, steps=settings.invert_steps)
        return cls(
            inversion=inversion,
            edit=EditConfig.from_settings(settings, strength=1.0, keep_layers=KEPT_FINE_LAYERS),
            diffuse=DiffuseConfig(
                steps=settings.diffuse_steps,
                learning_rate=settings.diffuse_lr,
                perceptual_weight=settings.diffuse_perceptual_weight,
                precision=precision,
                capture=settings.capture,
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
        # Summed: with several faces a stage runs once per face.
        elapsed = (time.perf_counter() - start) * 1000.0
        self.milliseconds[stage.value] = round(self.milliseconds.get(stage.value, 0.0) + elapsed, 1)


def edit_portrait(
    photo_rgb: np.ndarray,
    options: EditOptions,
    registry: ModelRegistry,
    progress: StageProgress,
    reuse: PortraitInversion | None = None,
    code: np.ndarray | None = None,
) -> EditResult:
    """Remove the double chin of the chosen face(s) in an HxWx3 uint8 RGB photo, using the registry's models;
    with `reuse` (an earlier job's inversion of the same photo), without aligning and inverting again.

    code: a ready-made latent code of the aligned face (`chinfix.codes.read_code`), used instead of inverting it.
    """
    registry.require_complete()
    config = PipelineConfig.from_settings(registry.settings)
    return run_pipeline(photo_rgb, options, registry, config, progress, reuse, code)


@dataclass(frozen=True)
class InvertedFace:
    """What a re-edit of one face reuses: where the face is, its code and the noise maps found with it."""

    index: int
    """Among the faces found, counted left to right."""
    landmarks: np.ndarray
    """68x2 float64 in the pixels of the photo as the faces were found (turned by `quarter_turns`)."""
    wp: np.ndarray
    """1 x num_ws x w_dim float32, the inverted (or given) code."""
    noise: dict[str, np.ndarray] | None
    """The projector's noise maps optimised with `wp`, by layer name, each 1 x 1 x R x R float32; None for a
    given code (it came without maps: the generator's constant noise)."""
    report: dict[str, Any]

    def generator(self, registry: ModelRegistry) -> torch.nn.Module | FixedNoiseGenerator:
        """The generator every stage after inversion synthesises this face with."""
        if self.noise is None:
            return registry.generator
        return FixedNoiseGenerator(registry.generator, noise_tensors(self.noise, registry.device))


@dataclass(frozen=True)
class PortraitInversion:
    """Everything align and invert found in a photo: a variant (new strength or refine) starts from it."""

    quarter_turns: int
    """The photo was turned clockwise this many times before its faces were found."""
    faces_found: int
    faces: list[InvertedFace]
    skipped_faces: list[dict[str, Any]]


def run_pipeline(
    photo_rgb: np.ndarray,
    options: EditOptions,
    registry: ModelRegistry,
    config: PipelineConfig,
    progress: StageProgress,
    reuse: PortraitInversion | None = None,
    code: np.ndarray | None = None,
) -> EditResult:
    """Edit the chosen face(s) of an HxWx3 uint8 RGB photo; with `reuse`, skip detection and inversion."""
    G = registry.generator
    clock = StageClock(registry.device)
    report: dict[str, Any] = {"refine": options.refine.value, "device": str(registry.device)}
    debug: dict[str, np.ndarray] = {}

    if reuse is None:
        state, aligned_faces = find_and_invert(photo_rgb, options, registry, config, progress, clock, code)
    else:
        state = reuse
        report["reused_inversion"] = True
        with clock.stage(Stage.ALIGN):
            # The crop follows from the landmarks alone: no detection, the same pixels as the first time.
            turned = turned_clockwise(photo_rgb, state.quarter_turns)
            aligned_faces = [align_face(turned, face.landmarks, G.img_resolution) for face in state.faces]
    working_photo = turned_clockwise(photo_rgb, state.quarter_turns)
    debug["aligned"] = aligned_faces[0].image
    report.update(faces_found=state.faces_found, rotation=90 * state.quarter_turns)

    face_reports, edits = list(state.skipped_faces), []
    for face, aligned in zip(state.faces, aligned_faces, strict=True):
        face_report, face_edit = edit_face(face, aligned, options, registry, config, progress, clock, debug)
        face_reports.append(face_report)
        if face_edit is not None:
            edits.append((face_report, face_edit))

    photo_mask = None
    aligned_return = options.return_kind is ReturnKind.ALIGNED
    unedited = aligned_faces[0].image if aligned_return else photo_rgb
    with clock.stage(Stage.COMPOSE):
        progress(Stage.COMPOSE, 0.0)
        if not edits:
            # Nothing to remove (or strength 0): the photo goes back as it came, not re-synthesised.
            image = unedited
        elif aligned_return:
            image = edits[0][1].paste.edited_crop
        else:
            composed, weights = paste_back_faces(working_photo, [face_edit.paste for _, face_edit in edits])
            image = turned_clockwise(composed, -state.quarter_turns)
            photo_mask = turned_clockwise(weights, -state.quarter_turns)
        progress(Stage.COMPOSE, 1.0)
    assessments = []
    for face_report, face_edit in edits:
        evidence = face_edit.evidence
        if not aligned_return:
            # Each face's facts in the composed photo, under its own mask (as turned for detection).
            evidence = replace(
                evidence, unedited_image=working_photo, edited_image=composed, transform=face_edit.paste.transform
            )
        assessment = assess_edit(registry, config.quality_gate, evidence)
        face_report["quality"] = assessment.report
        assessments.append(assessment)

    report["faces"] = sorted(face_reports, key=lambda entry: entry["index"])
    if options.face != "all":
        single = dict(face_reports[-1])
        report.update(chosen_face=single.pop("index"), **single)
    else:
        report["quality"] = faces_quality(config.quality_gate, assessments)
    report["timings_ms"] = clock.milliseconds
    # The gate refuses the photo when it refuses any of its faces (raises under the `fail` policy).
    if any(assessment.enforce(image, report) is not image for assessment in assessments):
        image, photo_mask = unedited, None
    return EditResult(image=image, report=report, debug_images=debug, photo_mask=photo_mask, inversion=state)


@dataclass(frozen=True)
class FaceEdit:
    """One face's edit: what to paste and what its quality facts are measured on."""

    paste: FacePaste
    evidence: EditEvidence
    """In aligned space; the photo's images are filled in once all faces are pasted."""


def faces_quality(gate: QualityGate, assessments: list[QualityAssessment]) -> dict[str, Any]:
    """The job's `quality` with face=all: each face's facts are in its entry of `faces`; this is the verdict."""
    if not assessments:
        return unedited_quality(gate)
    reasons = [reason for assessment in assessments for reason in assessment.report["reasons"]]
    refused = bool(reasons) and gate.policy is not QualityPolicy.REPORT
    return {
        "passed": not reasons,
        "reasons": reasons,
        "policy": gate.policy.value,
        "returned": "original" if refused else "edited",
        "thresholds": {"min_identity": gate.min_identity, "max_neck_lpips": gate.max_neck_lpips},
    }


def find_and_invert(
    photo_rgb: np.ndarray,
    options: EditOptions,
    registry: ModelRegistry,
    config: PipelineConfig,
    progress: StageProgress,
    clock: StageClock,
    code: np.ndarray | None = None,
) -> tuple[PortraitInversion, list[AlignedFace]]:
    """Find the faces (turning the photo when none is found upright), align the chosen ones, and invert them
    as one batch (or take the ready-made `code` of the one face)."""
    G = registry.generator
    with clock.stage(Stage.ALIGN):
        progress(Stage.ALIGN, 0.0)
        faces, quarter_turns = detect_faces_any_rotation(photo_rgb, registry.landmarker)
        chosen = choose_faces(faces, options.face)
        working_photo = turned_clockwise(photo_rgb, quarter_turns)
        face_reports = {
            index: describe_face(faces[index], index, quarter_turns, working_photo.shape) for index, _ in chosen
        }
        skipped = [dict(face_reports[index], skipped=True, reason=reason) for index, reason in chosen if reason]
        editable = [index for index, reason in chosen if reason is None]
        aligned_faces = [align_face(working_photo, faces[index].landmarks, G.img_resolution) for index in editable]

    with clock.stage(Stage.INVERT):
        progress(Stage.INVERT, 0.0)
        if code is not None:
            rows = given_code_rows(code, len(editable), G.num_ws, G.w_dim)
        else:
            rows = projected_rows(
                G,
                targets_from_rgb([aligned.image for aligned in aligned_faces], registry.device),
                registry,
                config.inversion,
                progress,
            )
    inverted = [
        InvertedFace(index, faces[index].landmarks, wp, noise, dict(face_reports[index], **facts))
        for index, (wp, noise, facts) in zip(editable, rows, strict=True)
    ]
    return PortraitInversion(quarter_turns, len(faces), inverted, skipped), aligned_faces



def describe_face(
    face: FaceLandmarks, index: int, quarter_turns: int, turned_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The report's entry of one face: its box and FFHQ quad in the photo's own pixels (before any turn)."""
    box = np.array([[face.box.left, face.box.top], [face.box.right, face.box.bottom]])
    corners = points_before_turn(box, quarter_turns, turned_shape)
    left, top = corners.min(axis=0)
    right, bottom = corners.max(axis=0)
    quad = points_before_turn(ffhq_quad(face.landmarks), quarter_turns, turned_shape)
    return {
        "index": index,
        "box": [round(float(value), 1) for value in (left, top, right, bottom)],
        "detection_score": round(float(face.box.score), 4),
        "eye_to_mouth_px": round(face.eye_to_mouth_px, 1),
        "quad": np.round(quad, 2).tolist(),
        "skipped": False,
    }


def points_before_turn(points: np.ndarray, quarter_turns: int, turned_shape: tuple[int, ...]) -> np.ndarray:
    """Nx2 (x, y) points of an image turned clockwise `quarter_turns` times → the same points in the image
    before the turn (continuous pixel coordinates, pixel i covering [i, i + 1])."""
    points = np.asarray(points, dtype=np.float64)
    height, width = turned_shape[:2]
    for _ in range(quarter_turns % 4):
        # Undo one clockwise turn: the turned image's column x was the row (height - x) ... of the one before.
        points = np.stack([points[:, 1], width - points[:, 0]], axis=1)
        height, width = width, height
    return points


def edit_face(
    face: InvertedFace,
    aligned: AlignedFace,
    options: EditOptions,
    registry: ModelRegistry,
    config: PipelineConfig,
    progress: StageProgress,
    clock: StageClock,
    debug: dict[str, np.ndarray],
) -> tuple[dict[str, Any], FaceEdit | None]:
    """Edit, mask and refine one inverted face: (its report entry, its edit, or None when left alone)."""
    G = registry.generator
    generator = face.generator(registry)
    report = dict(face.report)
    original_crop = aligned.image
    landmarks_aligned = landmarks_in_aligned(aligned.transform, face.landmarks)
    with clock.stage(Stage.EDIT):
        progress(Stage.EDIT, 0.0)
        edit = remove_double_chin(
            face.wp, registry.fine_boundary, config.edit_config(options, G.num_ws), registry.pose_normal
        )
        report.update(
            score_before=round(edit.score_before, 4),
            score_after=round(edit.score_after, 4),
            alpha=round(edit.alpha, 4),
            no_double_chin_detected=edit.skipped,
        )
    reconstruction = synthesise(generator, face.wp, registry.device)
    debug.setdefault("reconstruction", reconstruction)
    if edit.skipped or edit.alpha == 0.0:
        report["quality"] = unedited_quality(config.quality_gate)
        return report, None

    with clock.stage(Stage.REFINE):
        progress(Stage.REFINE, 0.0)
        edited_crop = synthesise(generator, edit.wp, registry.device)
        soft_config, hard_config = config.mask_configs(options.refine)
        original_masks = neck_masks(
            original_crop, landmarks_aligned, registry.face_parser, soft_config, hard_config=hard_config
        )
        soft_mask = original_masks.soft_mask
        report["mask_source"] = original_masks.source.value
        debug.setdefault("edited", edited_crop)
        debug.setdefault("soft_mask", np.round(soft_mask * 255).astype(np.uint8))
        refined = refine(
            options.refine, generator, registry, config, face.wp, original_crop, edited_crop, original_masks,
            landmarks_aligned, lambda step, total, _losses: progress(Stage.REFINE, step / total),
        )  # fmt: skip
    evidence = EditEvidence(
        original_crop=original_crop, reconstruction=reconstruction, edited_crop=refined.image, soft_mask=soft_mask,
        landmarks=landmarks_aligned, unedited_image=original_crop, edited_image=refined.image, transform=None,
    )  # fmt: skip
    return report, FaceEdit(FacePaste(aligned.transform, refined.image, soft_mask), evidence)


FaceCode = tuple[np.ndarray, dict[str, np.ndarray] | None, dict[str, Any]]
"""One face's 1 x num_ws x w_dim float32 code, its noise maps (each 1 x 1 x R x R float32, or None) and the
report's facts about where the code came from."""


def given_code_rows(code: np.ndarray, faces: int, num_ws: int, w_dim: int) -> list[FaceCode]:
    """A ready-made code (`chinfix.codes.read_code`) for the one face to edit, with the generator's constant
    noise (the code came without maps)."""
    if faces != 1:
        raise ChinfixError(
            ErrorCode.INVALID_CODE,
            f"A ready-made code is the code of one face, but {faces} faces are to be edited; choose one with `face`.",
        )
    return [(fit_code(code, num_ws, w_dim), None, {"code": "given"})]


def projected_rows(
    G: torch.nn.Module,
    targets: torch.Tensor,
    registry: ModelRegistry,
    config: InversionConfig,
    progress: StageProgress,
) -> list[FaceCode]:
    """Project the aligned crops (as one batch, which the registry's inverter may join with other jobs' crops):
    each crop's code with the noise maps optimised for it."""
    inversion = registry.inverter(
        G,
        targets,
        registry.perceptual,
        config,
        w_stats=registry.w_stats,
        progress=lambda step, total, _losses: progress(Stage.INVERT, step / total),
    )
    return [
        (
            inversion.wp[row : row + 1],
            {name: maps[row : row + 1] for name, maps in inversion.noise.items()},
            {
                "code": "inverted",
                "inversion": {
                    "space": config.space,
                    "steps": config.steps,
                    "final_loss": round(float(final_loss), 5),
                },
            },
        )
        for row, final_loss in enumerate(inversion.final_losses)
    ]


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
        crop = DiffuseCrop(original_wp, edited_crop, original_crop, original_masks.neck_mask, original_masks.soft_mask)
        return registry.diffuser(generator, crop, registry.diffuse_perceptual, config.diffuse, step_progress)
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
