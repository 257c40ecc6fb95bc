"""The HTTP routes: submit an edit, follow a job, fetch its result, probes.

Every job route acts for the caller's `Tenant` (app.auth): a job of another tenant does not exist for it (404).
"""

from __future__ import annotations

import re

import anyio
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQJobStatus
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth import Tenant, current_tenant, presents_operator_key
from app.errors import ApiError
from app.limits import RateLimiter
from app.openapi import edit_request_schema, error_responses, image_content, job_links
from app.schemas import JobAccepted, JobLinks, JobView, Readiness, ResultInfo, WorkerView, timestamp
from chinfix.contract import DEBUG_IMAGE_NAMES, EditOptions, ErrorCode, JobStatus
from chinfix.codes import MAX_CODE_BYTES, read_code
from chinfix.errors import ChinfixError, describe_validation_errors
from chinfix.imaging import ImageLimits, UploadInfo, check_upload
from chinfix.jobs import DeleteOutcome, JobRecord, JobStore, new_job_id

EDIT_JOB_FUNCTION = "worker.jobs.run_edit_job"
FILE_FIELDS = ("image", "code")
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FORM_FIELDS = 20
QUEUE_FULL_RETRY_AFTER_S = 60
QUOTA_RETRY_AFTER_S = 30
JOB_ID = re.compile(r"[0-9a-f]{32}")
"""What `new_job_id` makes; anything else is refused before it can name a Redis key."""
RQ_ENDED_STATUSES = {RQJobStatus.FINISHED, RQJobStatus.FAILED, RQJobStatus.STOPPED, RQJobStatus.CANCELED}


def enforce_rate_limit(request: Request, tenant: Tenant = Depends(current_tenant)) -> None:
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    retry_after = limiter.retry_after(tenant.owner)
    if retry_after:
        raise ApiError(
            429,
            ErrorCode.RATE_LIMITED,
            f"Too many requests for this API key's tenant; try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


health_router = APIRouter(tags=["health"])
jobs_router = APIRouter(tags=["jobs"], dependencies=[Depends(enforce_rate_limit)])


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


@jobs_router.post(
    "/edit",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra=edit_request_schema(),
    operation_id="submit_edit",
    responses={
        202: {"links": job_links(), "headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}},
        **error_responses(400, 401, 413, 415, 422, 429, 503),
    },
    summary="Submit a portrait; the double chin is removed in the background",
)
async def submit_edit(request: Request, response: Response, tenant: Tenant = Depends(current_tenant)) -> JobAccepted:
    settings = request.app.state.settings
    declared_length = int(request.headers.get("content-length") or 0)
    if declared_length > settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
        raise _upload_too_large(settings.max_upload_bytes)
    queue: Queue = request.app.state.queue
    if queue.count >= settings.max_queued_jobs:
        raise ApiError(
            503,
            ErrorCode.QUEUE_FULL,
            f"{settings.max_queued_jobs} photos are already waiting; try again in a minute.",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
        )
    form = await _read_form(request)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Send the photo as a multipart file field named 'image'.")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise _upload_too_large(settings.max_upload_bytes)
    options = parse_options([(key, value) for key, value in form.multi_items() if key not in FILE_FIELDS])
    await _check_upload(request, data)
    code_bytes = await read_code_field(form.get("code"))

    job_id = await anyio.to_thread.run_sync(create_job, request, tenant, data, options, code_bytes)
    links = _links(request, job_id, [])
    response.headers["Location"] = links.self
    return JobAccepted(id=job_id, status=JobStatus.QUEUED, links=links)


def create_job(request: Request, tenant: Tenant, data: bytes, options: EditOptions, code_bytes: bytes | None) -> str:
    """Count the job against the tenant's quota, then store and queue it; the new job's id."""
    settings = request.app.state.settings
    queue: Queue = request.app.state.queue
    store = _store(request)
    job_id = new_job_id()
    if not store.reserve_slot(tenant.owner, job_id, settings.tenant_max_active_jobs):
        raise ApiError(
            429,
            ErrorCode.QUOTA_EXCEEDED,
            f"This tenant already has {settings.tenant_max_active_jobs} jobs queued or running; "
            "wait for some to finish (or delete them).",
            headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
        )

    def enqueue(pipe) -> None:
        queue.enqueue_call(
            EDIT_JOB_FUNCTION,
            args=(job_id,),
            job_id=job_id,
            timeout=settings.job_timeout_seconds,
            result_ttl=settings.job_ttl_seconds,
            failure_ttl=settings.job_ttl_seconds,
            ttl=settings.job_ttl_seconds,
            pipeline=pipe,
        )

    try:
        store.create(job_id, data, options, tenant.owner, enqueue, code_bytes=code_bytes)
    except RedisError:
        store.release_slot(tenant.owner, job_id)
        raise
    return job_id


async def _read_form(request: Request) -> FormData:
    """The multipart body; a malformed one (two files, an option sent as a file, too many fields) is 422."""
    try:
        form = await request.form(max_files=len(FILE_FIELDS), max_fields=MAX_FORM_FIELDS)
    except StarletteHTTPException as error:
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, f"The multipart body was refused: {error.detail}.") from None
    files = [key for key, value in form.multi_items() if isinstance(value, UploadFile)]
    if len(files) != len(set(files)) or not set(files) <= set(FILE_FIELDS):
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Only the fields 'image' and 'code' may be files, each once.")
    return form


async def read_code_field(field: object) -> bytes | None:
    """The optional `code` file field: its bytes once `read_code` accepts them, 422 invalid_code otherwise."""
    if field is None:
        return None
    if not isinstance(field, UploadFile):
        raise ApiError(422, ErrorCode.INVALID_CODE, "Send the code as a multipart file field named 'code' (a .npy file).")
    data = await field.read(MAX_CODE_BYTES + 1)
    try:
        read_code(data)
    except ChinfixError as error:
        raise ApiError(422, ErrorCode.INVALID_CODE, error.message) from None
    return data


async def _check_upload(request: Request, data: bytes) -> UploadInfo:
    """The upload's structure checked without decoding pixels, a bounded number at a time."""
    settings = request.app.state.settings
    limits = ImageLimits(max_pixels=settings.max_pixels, min_side=settings.min_side)
    return await anyio.to_thread.run_sync(check_upload, data, limits, limiter=request.app.state.upload_check_slots)


def parse_options(fields: list[tuple[str, object]]) -> EditOptions:
    """The options of the form, by their documented names only; a field sent twice is refused."""
    names = [name for name, _ in fields]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, f"Send each option once: {', '.join(repeated)} came twice.")
    try:
        return EditOptions.model_validate(dict(fields), by_alias=True, by_name=False)
    except ValidationError as error:
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, describe_validation_errors(error.errors())) from None


@jobs_router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    operation_id="get_job",
    responses=error_responses(401, 404, 422, 429, 503),
    summary="State, stage, progress and outcome of a job",
)
def get_job(job_id: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> JobView:
    record = _existing_job(request, job_id, tenant)
    return _job_view(request, record)


@jobs_router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    operation_id="get_result",
    responses={
        200: {"description": "The edited image", "content": image_content("image/jpeg", "image/png", "image/webp")},
        **error_responses(401, 404, 409, 422, 429, 503),
    },
    summary="The edited image",
)
def get_result(job_id: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> Response:
    record = _existing_job(request, job_id, tenant)
    if record.status is JobStatus.FAILED:
        error = record.error or {}
        raise ApiError(409, ErrorCode.JOB_FAILED, f"The job failed ({error.get('code')}): {error.get('message')}")
    if record.status is not JobStatus.SUCCEEDED or record.result is None:
        raise ApiError(409, ErrorCode.JOB_NOT_FINISHED, f"The job is {record.status}; poll /jobs/{job_id}.")
    data = _store(request).load_result(job_id)
    if data is None:
        raise _job_not_found()
    return Response(content=data, media_type=record.result["content_type"])


@jobs_router.get(
    "/jobs/{job_id}/debug/{name}",
    response_class=Response,
    operation_id="get_debug_image",
    responses={
        200: {"description": "A PNG image", "content": image_content("image/png")},
        **error_responses(401, 404, 422, 429, 503),
    },
    summary="An intermediate image (jobs submitted with debug=true)",
)
def get_debug_image(job_id: str, name: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> Response:
    record = _existing_job(request, job_id, tenant)
    data = _store(request).load_debug_image(job_id, name) if name in record.debug_images else None
    if data is None:
        kept = ", ".join(record.debug_images) or "none"
        raise ApiError(
            404,
            ErrorCode.NOT_FOUND,
            f"No debug image of that name for this job; it kept: {kept} "
            f"(names: {', '.join(DEBUG_IMAGE_NAMES)}; submit with debug=true).",
        )
    return Response(content=data, media_type="image/png")


@jobs_router.delete(
    "/jobs/{job_id}",
    status_code=204,
    operation_id="delete_job",
    responses=error_responses(401, 404, 409, 422, 429, 503),
    summary="Cancel a queued job or delete a finished one",
)
def delete_job(job_id: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> Response:
    _existing_job(request, job_id, tenant)
    outcome = _store(request).delete(job_id, tenant.owner, request.app.state.queue.key)
    if outcome is DeleteOutcome.RUNNING:
        raise ApiError(409, ErrorCode.JOB_RUNNING, "The job is running and cannot be cancelled; delete it once it ends.")
    if outcome is DeleteOutcome.MISSING:
        raise _job_not_found()
    return Response(status_code=204)


@health_router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "Not ready: Redis unreachable or no worker with its models"}},
    summary="Redis reachable and a worker with its models (details only with the operator key)",
)
def readyz(request: Request, response: Response) -> Readiness:
    readiness = check_readiness(request)
    response.status_code = 200 if readiness.ready else 503
    if presents_operator_key(request):
        return readiness
    return Readiness(ready=readiness.ready)


def check_readiness(request: Request) -> Readiness:
    store = _store(request)
    try:
        store.redis.ping()
        heartbeats = store.worker_heartbeats()
    except RedisError as error:
        return Readiness(ready=False, redis=False, workers=[], problems=[f"Redis is unreachable ({type(error).__name__})."])
    workers = [WorkerView.model_validate(beat) for beat in heartbeats]
    problems = []
    if not workers:
        problems.append("No worker is running: start one with `chinfix worker`.")
    for worker in workers:
        if worker.missing_models:
            problems.append(
                f"Worker {worker.name} is missing models: {', '.join(worker.missing_models)}. "
                f"Run `chinfix models pull` on its machine."
            )
        for name, reason in worker.unreadable_models.items():
            problems.append(f"Worker {worker.name} could not read {name} ({reason}): delete the file and pull it again.")
    ready = any(not worker.missing_models for worker in workers)
    return Readiness(ready=ready, redis=True, workers=workers, problems=problems)


def _existing_job(request: Request, job_id: str, tenant: Tenant) -> JobRecord:
    """The tenant's job record, with a job that can no longer finish (its worker died, its queue entry is gone)
    settled as failed first, so a client never polls forever."""
    if not JOB_ID.fullmatch(job_id):
        raise _job_not_found()
    store = _store(request)
    record = store.get(job_id)
    if record is None or record.owner != tenant.owner:
        raise _job_not_found()
    if record.status is JobStatus.QUEUED and _dropped_from_queue(request, job_id):
        return store.fail_dropped_from_queue(record)
    return store.fail_if_worker_lost(record)


def _dropped_from_queue(request: Request, job_id: str) -> bool:
    """True when RQ no longer holds the job or has ended it (a worker died between taking it and starting it,
    Redis evicted it) while our record still says queued."""
    try:
        status = Job.fetch(job_id, connection=request.app.state.redis).get_status()
    except NoSuchJobError:
        return True
    return status in RQ_ENDED_STATUSES


def _job_not_found() -> ApiError:
    return ApiError(404, ErrorCode.JOB_NOT_FOUND, "No such job: it never existed, was deleted, or expired.")


def _upload_too_large(limit: int) -> ApiError:
    return ApiError(413, ErrorCode.UPLOAD_TOO_LARGE, f"The upload is larger than the {limit / 1e6:g} MB limit.")


def _base_url(request: Request) -> str:
    """CHINFIX_PUBLIC_URL; else the request's own base when its Host is trusted; else "" (links relative to the
    API's root): a client's Host header must not put another site into the links other clients follow."""
    settings = request.app.state.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if (request.url.hostname or "").lower() in settings.trusted_hosts:
        return str(request.base_url).rstrip("/")
    return ""


def _links(request: Request, job_id: str, debug_names: list[str]) -> JobLinks:
    base = f"{_base_url(request)}/jobs/{job_id}"
    return JobLinks(
        self=base, result=f"{base}/result", debug={name: f"{base}/debug/{name}" for name in debug_names}
    )


def _job_view(request: Request, record: JobRecord) -> JobView:
    links = _links(request, record.id, record.debug_images)
    result = None
    if record.result is not None:
        result = ResultInfo(url=links.result, **record.result)
    return JobView(
        id=record.id,
        status=record.status,
        stage=record.stage,
        progress=record.progress,
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        options=record.options,
        error=record.error,
        result=result,
        report=record.report,
        links=links,
    )
