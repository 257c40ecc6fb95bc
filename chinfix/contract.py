"""The job contract, defined once: the API and the worker both import it.

Queue name and key prefix come from settings; everything else here is fixed vocabulary.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Stage(StrEnum):
    """Pipeline stages in the order a job goes through them."""

    ALIGN = "align"
    INVERT = "invert"
    EDIT = "edit"
    REFINE = "refine"
    COMPOSE = "compose"


class ErrorCode(StrEnum):
    """Why a request or a job failed, in words a photo app can branch on."""

    # request errors (HTTP 4xx, nothing queued)
    UNAUTHORIZED = "unauthorized"
    INVALID_OPTIONS = "invalid_options"
    EMPTY_UPLOAD = "empty_upload"
    UPLOAD_TOO_LARGE = "upload_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"
    UNSUPPORTED_FORMAT = "unsupported_format"
    IMAGE_UNREADABLE = "image_unreadable"
    INVALID_CODE = "invalid_code"
    JOB_NOT_FOUND = "job_not_found"
    JOB_NOT_FINISHED = "job_not_finished"
    JOB_FAILED = "job_failed"
    JOB_RUNNING = "job_running"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    SERVICE_UNAVAILABLE = "service_unavailable"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    INVALID_CALLBACK_URL = "invalid_callback_url"
    VARIANT_UNAVAILABLE = "variant_unavailable"
    # job errors (the job ends failed)
    NO_FACE = "no_face"
    FACE_NOT_FOUND = "face_not_found"
    FACE_TOO_SMALL = "face_too_small"
    MODEL_MISSING = "model_missing"
    JOB_TIMEOUT = "job_timeout"
    WORKER_LOST = "worker_lost"
    JOB_LOST = "job_lost"
    LOW_QUALITY = "low_quality"
    INTERNAL_ERROR = "internal_error"


class RefineMethod(StrEnum):
    DIFFUSE = "diffuse"
    WARP = "warp"
    NONE = "none"


class QualityPolicy(StrEnum):
    """What the worker does with an edit that fails the quality gate."""

    RETURN_ORIGINAL = "return_original"
    """the job succeeds and the photo comes back unchanged; the report's `quality.reasons` say why"""
    FAIL = "fail"
    """the job fails with `low_quality`"""
    REPORT = "report"
    """the edit comes back all the same (the paper's behaviour); the report still says it failed the gate"""


class OutputFormat(StrEnum):
    AUTO = "auto"
    """The input's format: JPEG answers JPEG (untouched blocks kept), PNG PNG, WebP lossless WebP, HEIC JPEG."""
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    HEIC = "heic"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


class ReturnKind(StrEnum):
    PHOTO = "photo"
    ALIGNED = "aligned"
    PATCH = "patch"
    """A PNG of the edited region's bounding box, alpha 255 where the edit blended in, 0 elsewhere."""
    MASK = "mask"
    """The soft neck mask in photo coordinates, HxW uint8 PNG (255 = fully edited)."""


FaceChoice = Literal["largest", "all"] | Annotated[int, Field(ge=0)]


class EditOptions(BaseModel):
    """What a client may ask of one edit. The API validates it; the worker receives it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    strength: float = Field(1.0, ge=0.0, le=1.0, description="0 leaves the photo alone, 1 is the full edit")
    refine: RefineMethod = Field(RefineMethod.DIFFUSE, description="diffuse (quality), warp (speed) or none")
    face: FaceChoice = Field(
        "largest", description="'largest', 'all' (every face), or the index of a face, counted left to right"
    )
    output: OutputFormat = Field(
        OutputFormat.AUTO, description="encoding of the result; auto answers in the input's format (HEIC as JPEG)"
    )
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    return_kind: ReturnKind = Field(
        ReturnKind.PHOTO,
        alias="return",
        description="photo: the whole edited photo; aligned: the aligned face crop; patch: the edited region "
        "with alpha; mask: the soft neck mask in photo coordinates",
    )
    strip_metadata: bool = Field(False, description="drop EXIF and XMP (GPS) from the result; the ICC profile stays")
    debug: bool = Field(False, description="also keep the intermediate images (aligned, reconstruction, edit, mask)")


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)

DEBUG_IMAGE_NAMES = ("aligned", "reconstruction", "edited", "soft_mask")


class RedisKeys:
    """Every Redis key chinfix writes, under one prefix so several deployments can share a Redis."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        """Hash: the job record (status, stage, progress, timestamps, error, result, report)."""
        return f"{self.prefix}:job:{job_id}"

    def job_input(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:input"

    def job_code(self, job_id: str) -> str:
        """The ready-made latent code (.npy bytes) sent with the photo, if any."""
        return f"{self.prefix}:job:{job_id}:code"

    def job_result(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:result"

    def job_debug(self, job_id: str, name: str) -> str:
        return f"{self.prefix}:job:{job_id}:debug:{name}"

    def job_inversion(self, job_id: str) -> str:
        """What align and invert found (faces, codes): a variant of the job starts from it."""
        return f"{self.prefix}:job:{job_id}:inversion"

    def job_callback_scheduled(self, job_id: str) -> str:
        """Set once the job's callback delivery is queued, so a job ending is announced once."""
        return f"{self.prefix}:job:{job_id}:callback-scheduled"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        """A tenant's Idempotency-Key (hashed): the job it created and its request's digest."""
        return f"{self.prefix}:idempotency:{tenant}:{key_digest}"

    def job_lease(self, job_id: str) -> str:
        """Refreshed by the worker while it runs the job; its expiry means the worker died."""
        return f"{self.prefix}:job:{job_id}:lease"

    def running(self) -> str:
        """Sorted set: the jobs running now (score: start time); the `running` gauge counts it."""
        return f"{self.prefix}:running"

    def tenant_active(self, owner: str) -> str:
        """Sorted set: a tenant's queued and running jobs (score: creation time); its quota counts it."""
        return f"{self.prefix}:tenant:{owner}:active"

    def tenant_bucket(self, owner: str) -> str:
        """Hash: a tenant's rate-limit token bucket (tokens, last refill time)."""
        return f"{self.prefix}:tenant:{owner}:bucket"

    def outcomes(self) -> str:
        """Hash: how many jobs ended each way, ever (fields `succeeded` and `failed:<error code>`)."""
        return f"{self.prefix}:outcomes"

    def worker(self, worker_name: str) -> str:
        """A worker's heartbeat: its name, device and which models it lacks."""
        return f"{self.prefix}:worker:{worker_name}"

    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def training_shard(self, run_id: str, shard: int) -> str:
        """Hash: one shard of a `chinfix train pairs --queue` run (status, attempt, progress)."""
        return f"{self.prefix}:train:{run_id}:shard:{shard}"

    def training_shard_lease(self, run_id: str, shard: int) -> str:
        """Refreshed by the worker running the shard; its expiry means that worker died."""
        return f"{self.training_shard(run_id, shard)}:lease"

    def training_shard_result(self, run_id: str, shard: int) -> str:
        """Hash: the shard's arrays until the run collects them."""
        return f"{self.training_shard(run_id, shard)}:result"
