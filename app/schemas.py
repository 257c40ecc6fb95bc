"""Response bodies, as pydantic models so /docs shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from chinfix.contract import JobStatus, Stage


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class JobLinks(BaseModel):
    self: str
    result: str
    debug: dict[str, str] = Field(default_factory=dict)


class ResultInfo(BaseModel):
    url: str
    width: int
    height: int
    content_type: str
    offset: dict[str, int] | None = Field(
        None, description="return=patch: where the patch's top-left pixel sits in the photo ({left, top})"
    )


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    links: JobLinks


class JobView(BaseModel):
    id: str
    status: JobStatus
    stage: Stage | None
    progress: float = Field(description="0..1 over the whole job")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    options: dict[str, Any]
    error: ErrorBody | None
    result: ResultInfo | None
    report: dict[str, Any] = Field(
        default_factory=dict, description="what the pipeline found: faces, scores, alpha, mask source, timings"
    )
    callback: dict[str, Any] | None = Field(
        None, description="delivery of the callback_url webhook: attempts, last_status, last_error, delivered_at"
    )
    variant_of: str | None = Field(None, description="the job whose inversion this variant reuses")
    links: JobLinks


class WorkerView(BaseModel):
    name: str
    device: str | None = None
    missing_models: list[str] = Field(default_factory=list)
    missing_optional_models: list[str] = Field(
        default_factory=list,
        description="absent models the worker edits without: the face parser (landmark neck mask instead), the "
        "double-chin classifier (no image-space double-chin probability in the report)",
    )
    unreadable_models: dict[str, str] = Field(
        default_factory=dict, description="present but failed to load: model name -> the loader's reason"
    )


class Readiness(BaseModel):
    """Anonymous callers see `ready` only; the operator key (CHINFIX_METRICS_KEY) shows the rest."""

    ready: bool
    redis: bool | None = None
    workers: list[WorkerView] | None = None
    problems: list[str] | None = None


def timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)
