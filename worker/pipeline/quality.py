"""Quality facts of one edit, and the gate that refuses a bad one.

Facts (the job report's `quality`):
- `identity_similarity`: cosine similarity of dlib's face descriptors of the original and the edited aligned
  crop, both cut with the original's landmarks (the edit moves the jaw, not the eyes and nose the chip is
  aligned on, so the same cut compares like with like);
- `neck_fit`: LPIPS and PSNR of the reconstruction against the crop under the soft mask: how well the
  generator explains this neck before any edit. An edit of a neck it cannot reproduce is an edit of
  something else;
- `changed_area`: pixels of the returned image that differ from the input, their share, and the box of the
  mask's footprint in the returned image;
- `double_chin_probability`: the seed's double-chin classifier on the original and on the edited aligned crop,
  when the model store has the classifier (and the face parser its input needs).

A fact that is null is in `unmeasured`, with the reason.

The gate compares the first two with CHINFIX_MIN_IDENTITY and CHINFIX_MAX_NECK_LPIPS and, under
CHINFIX_QUALITY_POLICY, returns the input unchanged, fails the job with `low_quality`, or only reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from chinfix.contract import QualityPolicy
from chinfix.errors import LowQualityError
from worker.models.face_identity import cosine_similarity
from worker.pipeline.compose import warp_mask_to_photo
from worker.pipeline.invert import targets_from_rgb
from worker.registry import DOUBLE_CHIN_CLASSIFIER, FACE_PARSING
from worker.training.classifier import double_chin_probabilities

if TYPE_CHECKING:
    from chinfix.settings import Settings
    from worker.pipeline.align import AlignmentTransform
    from worker.registry import ModelRegistry

PERCEPTUAL_SIDE = 256
"""The neck's box is compared at the resolution NVIDIA's projector measures LPIPS at."""
MIN_PERCEPTUAL_SIDE = 32
"""VGG16 halves the image four times before its last LPIPS stage: a smaller box is enlarged to this."""
PSNR_CAP_DB = 100.0
"""PSNR of identical pixels is infinite, which JSON cannot carry."""
LEFT_ALONE = "the photo was left alone"


@dataclass(frozen=True)
class QualityGate:
    min_identity: float = 0.95
    max_neck_lpips: float = 0.4
    policy: QualityPolicy = QualityPolicy.RETURN_ORIGINAL

    @classmethod
    def from_settings(cls, settings: Settings) -> QualityGate:
        return cls(settings.min_identity, settings.max_neck_lpips, QualityPolicy(settings.quality_policy))

    def reasons(self, identity_similarity: float, neck_lpips: float) -> list[str]:
        """One sentence per failed check; empty when the edit passes."""
        reasons = []
        if identity_similarity < self.min_identity:
            reasons.append(
                f"identity similarity {identity_similarity:.3f} is under CHINFIX_MIN_IDENTITY={self.min_identity:g}: "
                "the edited face may not look like the same person"
            )
        if neck_lpips > self.max_neck_lpips:
            reasons.append(
                f"neck LPIPS {neck_lpips:.3f} is over CHINFIX_MAX_NECK_LPIPS={self.max_neck_lpips:g}: "
                "the generator could not reproduce this neck, so its edit is unreliable"
            )
        return reasons


@dataclass(frozen=True)
class EditEvidence:
    """What the facts are measured on. Crops are SxSx3 uint8 RGB in aligned space; images HxWx3 uint8 RGB."""

    original_crop: np.ndarray
    reconstruction: np.ndarray
    """G(w) of the inverted code, before any edit."""
    edited_crop: np.ndarray
    """The refined crop: what gets pasted back."""
    soft_mask: np.ndarray
    """SxS float32 in 0..1."""
    landmarks: np.ndarray
    """68x2 float64, the original's landmarks in the crop."""
    unedited_image: np.ndarray
    """What the job returns when the gate refuses the edit: the photo, or the aligned crop."""
    edited_image: np.ndarray
    transform: AlignmentTransform | None
    """Crop → photo; None when the returned image is the aligned crop itself."""


@dataclass(frozen=True)
class QualityAssessment:
    report: dict[str, Any]
    """JSON-ready: passed, reasons, policy, returned, the facts, the thresholds, ms."""
    unedited_image: np.ndarray

    @property
    def passed(self) -> bool:
        return self.report["passed"]

    def enforce(self, edited_image: np.ndarray, job_report: dict[str, Any]) -> np.ndarray:
        """The image the job returns under the gate's policy; LowQualityError (carrying `job_report`) under `fail`."""
        if self.passed or self.report["policy"] == QualityPolicy.REPORT:
            return edited_image
        if self.report["policy"] == QualityPolicy.FAIL:
            raise LowQualityError(
                "The edit did not pass the quality check: " + "; ".join(self.report["reasons"]) + ".", job_report
            )
        return self.unedited_image


def assess_edit(registry: ModelRegistry, gate: QualityGate, evidence: EditEvidence) -> QualityAssessment:
    """The quality facts of an edit and the gate's verdict on them."""
    start = time.perf_counter()
    identity = identity_similarity(registry.face_describer, evidence.original_crop, evidence.edited_crop, evidence.landmarks)
    fit = neck_fit(registry.perceptual, evidence.original_crop, evidence.reconstruction, evidence.soft_mask)
    if evidence.transform is None:
        mask_weights = evidence.soft_mask
    else:
        mask_weights = warp_mask_to_photo(evidence.transform, evidence.soft_mask, evidence.edited_image.shape)
    reasons = gate.reasons(identity, fit["lpips"])
    unmeasured: dict[str, str] = {}
    probability = None
    why_no_probability = missing_classifier_input(registry)
    if why_no_probability is None:
        probability = double_chin_probability(
            registry.double_chin_classifier, registry.face_parser, evidence.original_crop, evidence.edited_crop
        )
    else:
        unmeasured["double_chin_probability"] = why_no_probability
    report = {
        "passed": not reasons,
        "reasons": reasons,
        "policy": gate.policy.value,
        "returned": "edited" if not reasons or gate.policy is QualityPolicy.REPORT else "original",
        "identity_similarity": round(identity, 4),
        "neck_fit": fit,
        "changed_area": changed_area(evidence.unedited_image, evidence.edited_image, mask_weights),
        "double_chin_probability": probability,
        "unmeasured": unmeasured,
        "thresholds": {"min_identity": gate.min_identity, "max_neck_lpips": gate.max_neck_lpips},
        "ms": round((time.perf_counter() - start) * 1000.0, 1),
    }
    return QualityAssessment(report=report, unedited_image=evidence.unedited_image)


def unedited_quality(gate: QualityGate) -> dict[str, Any]:
    """The report's `quality` when the photo comes back as it came (no double chin, or strength 0)."""
    return {
        "passed": True,
        "reasons": [],
        "policy": gate.policy.value,
        "returned": "original",
        "identity_similarity": None,
        "neck_fit": None,
        "changed_area": {"pixels": 0, "share": 0.0, "mask_box": None},
        "double_chin_probability": None,
        "unmeasured": dict.fromkeys(("identity_similarity", "neck_fit", "double_chin_probability"), LEFT_ALONE),
        "thresholds": {"min_identity": gate.min_identity, "max_neck_lpips": gate.max_neck_lpips},
    }


def identity_similarity(describer: Any, original_crop: np.ndarray, edited_crop: np.ndarray, landmarks: np.ndarray) -> float:
    """Cosine similarity of the face descriptors of two SxSx3 uint8 RGB crops, both cut with the same 68x2 landmarks."""
    return cosine_similarity(describer.descriptor(original_crop, landmarks), describer.descriptor(edited_crop, landmarks))


def missing_classifier_input(registry: ModelRegistry) -> str | None:
    """Why the double-chin probability cannot be measured by this worker; None when it can."""
    if registry.double_chin_classifier is None:
        return f"the model store has no {DOUBLE_CHIN_CLASSIFIER} (optional): `chinfix models pull {DOUBLE_CHIN_CLASSIFIER}`"
    if registry.face_parser is None:
        return f"the double-chin classifier's input needs the face parser: `chinfix models pull {FACE_PARSING}`"
    return None


def double_chin_probability(
    classifier: torch.nn.Module, parser: torch.nn.Module, original_crop: np.ndarray, edited_crop: np.ndarray
) -> dict[str, float]:
    """The classifier's double-chin probability of two SxSx3 uint8 RGB aligned crops, as one batch."""
    before, after = double_chin_probabilities(classifier, parser, [original_crop, edited_crop])
    return {"before": round(float(before), 4), "after": round(float(after), 4)}


@torch.no_grad()
def neck_fit(
    perceptual: torch.nn.Module, original_crop: np.ndarray, reconstruction: np.ndarray, soft_mask: np.ndarray
) -> dict[str, float]:
    """LPIPS and PSNR (dB) of the reconstruction against the original, both SxSx3 uint8 RGB, weighted by the SxS
    soft mask. LPIPS is measured on the mask's box (shrunk to 256 pixels on its long side, as the projector
    compares images) and averaged under the mask, so the number says how well the neck is explained whatever
    its share of the frame."""
    box = mask_box(soft_mask)
    if box is None:
        return {"lpips": 0.0, "psnr_db": PSNR_CAP_DB}
    left, top, right, bottom = box
    size = perceptual_size(right - left, bottom - top)
    crops = [cv2.resize(image[top:bottom, left:right], size, interpolation=cv2.INTER_AREA)
             for image in (original_crop, reconstruction)]  # fmt: skip
    weights = cv2.resize(soft_mask[top:bottom, left:right].astype(np.float32), size, interpolation=cv2.INTER_AREA)
    device = next(perceptual.parameters()).device
    images = targets_from_rgb(crops, device)
    distance = perceptual.distance_map(perceptual.features(images[:1]), perceptual.features(images[1:]), size[::-1])
    weights_t = torch.as_tensor(weights, device=device)
    lpips = float((distance[0, 0] * weights_t).sum() / weights_t.sum())
    return {"lpips": round(lpips, 4), "psnr_db": round(masked_psnr(original_crop, reconstruction, soft_mask), 2)}


def perceptual_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) to measure a box of that size at: never enlarged past what VGG16's four poolings need,
    shrunk to PERCEPTUAL_SIDE on the long side."""
    scale = min(1.0, PERCEPTUAL_SIDE / max(width, height))
    return max(round(width * scale), MIN_PERCEPTUAL_SIDE), max(round(height * scale), MIN_PERCEPTUAL_SIDE)


def masked_psnr(image_a: np.ndarray, image_b: np.ndarray, weights: np.ndarray) -> float:
    """PSNR in dB of two HxWx3 uint8 images, the squared error weighted per pixel by HxW `weights` (not all 0)."""
    squared = np.square(image_a.astype(np.float64) - image_b.astype(np.float64)).mean(axis=2)
    mse = float((squared * weights).sum() / weights.sum())
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(10.0 * math.log10(255.0**2 / mse), PSNR_CAP_DB)


def changed_area(before: np.ndarray, after: np.ndarray, mask_weights: np.ndarray) -> dict[str, Any]:
    """Pixels where two HxWx3 uint8 images differ, their share of the image, and the box of HxW `mask_weights` > 0."""
    pixels = int((before != after).any(axis=2).sum())
    return {
        "pixels": pixels,
        "share": round(pixels / (before.shape[0] * before.shape[1]), 6),
        "mask_box": mask_box(mask_weights),
    }


def mask_box(weights: np.ndarray) -> list[int] | None:
    """[left, top, right, bottom] (right, bottom exclusive) of the HxW weights > 0; None when there are none."""
    rows, cols = np.nonzero((weights > 0).any(axis=1))[0], np.nonzero((weights > 0).any(axis=0))[0]
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
