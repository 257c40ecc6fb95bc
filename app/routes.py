"""The HTTP routes: submit an edit, follow a job, fetch its result, probes.

Every job route acts for the caller's `Tenant` (app.auth): a job of another tenant does not exist for it (404).
Submissions (an edit, a variant) may carry an Idempotency-Key (app.idempotency); an edit may carry a
callback_url, POSTed the job view, signed, when the job ends (chinfix.callbacks).
"""

from __future__ import annotations

import hashlib
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
from app.idempotency import claim_idempotency_key, idempotency_key_of, release_idempotency_key, request_digest
from app.limits import RateLimiter
from app.openapi import (
    PATCH_OFFSET_HEADER,
    edit_request_schema,
    error_responses,
    idempotency_parameter,
    image_content,
    job_links,
    variant_request_schema,
)
from app.schemas import JobAccepted, JobLinks, JobView, Readiness, ResultInfo, WorkerView, timestamp
from chinfix.callbacks import CallbackRefused, check_callback_url, schedule_callback
from chinfix.contract import DEBUG_IMAGE_NAMES, EditOptions, ErrorCode, JobStatus
from chinfix.codes import MAX_CODE_BYTES, read_code
from chinfix.errors import ChinfixError, describe_validation_errors
from chinfix.imaging import ImageLimits, UploadInfo, check_upload
from chinfix.jobs import DeleteOutcome, JobRecord, JobStore, new_job_id
from chinfix.settings import Settings

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
    openapi_extra={**edit_request_schema(), "parameters": [idempotency_parameter()]},
    operation_id="submit_edit",
    responses={
        202: {"links": job_links(), "headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}},
        **error_responses(400, 401, 413, 415, 422, 429, 503),
    },
    summary="Submit a portrait; the double chin is removed in the background",
)
async def submit_edit(request: Request, response: Response, tenant: Tenant = Depends(current_tenant)) -> JobAccepted:
    settings = request.app.state.settings
    idempotency_key = idempotency_key_of(request)
    declared_length = int(request.headers.get("content-length") or 0)
    if declared_length > settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
        raise _upload_too_large(settings.max_upload_bytes)
    refuse_when_queue_full(request)
    form = await _read_form(request)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Send the photo as a multipart file field named 'image'.")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise _upload_too_large(settings.max_upload_bytes)
    fields = [(key, value) for key, value in form.multi_items() if key not in FILE_FIELDS]
    callback_urls = [value for key, value in fields if key == "callback_url"]
    options = parse_options([(key, value) for key, value in fields if key != "callback_url"])
    if len(callback_urls) > 1:
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Send each option once: callback_url came twice.")
    callback_url = str(callback_urls[0]) if callback_urls else None
    await _check_upload(request, data)
    code_bytes = await read_code_field(form.get("code"))
    if callback_url is not None:
        await anyio.to_thread.run_sync(require_callback_allowed, settings, tenant, callback_url)
    # A different code is a different request: the digest covers its bytes.
    code_sha256 = hashlib.sha256(code_bytes).hexdigest() if code_bytes is not None else None
    digest = request_digest(data, options, callback_url, code_sha256)
    return await anyio.to_thread.run_sync(
        lambda: queue_job(
            request, response, tenant, data, options, idempotency_key, digest,
            code_bytes=code_bytes,
            callback_url=callback_url,
            callback_base_url=_base_url(request) if callback_url else None,
        )
    )  # fmt: skip


def refuse_when_queue_full(request: Request) -> None:
    """503 queue_full while `CHINFIX_MAX_QUEUED_JOBS` jobs wait (back-pressure), before any work on the request."""
    settings = request.app.state.settings
    queue: Queue = request.app.state.queue
    if queue.count >= settings.max_queued_jobs:
        raise ApiError(
            503,
            ErrorCode.QUEUE_FULL,
            f"{settings.max_queued_jobs} photos are already waiting; try again in a minute.",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
        )


def queue_job(
    request: Request,
    response: Response,
    tenant: Tenant,
    data: bytes,
    options: EditOptions,
    idempotency_key: str | None,
    digest: str,
    code_bytes: bytes | None = None,
    **origin: str | None,
) -> JobAccepted:
    """Store and queue a job, or, for an Idempotency-Key this tenant used before on the same request (`digest`),
    answer with the job that request created (nothing queued). `code_bytes`: the ready-made code, if sent;
    `origin`: what `JobStore.create` records besides."""
    store = _store(request)
    job_id = new_job_id()
    if idempotency_key is not None:
        earlier = claim_idempotency_key(store, tenant.id, idempotency_key, job_id, digest)
        if earlier is not None:
            record = store.get(earlier)
            return _accepted(request, response, earlier, record.status if record else JobStatus.QUEUED)
    try:
        create_job(request, tenant, job_id, data, options, code_bytes, **origin)
    except Exception:
        if idempotency_key is not None:
            release_idempotency_key(store, tenant.id, idempotency_key)
        raise
    return _accepted(request, response, job_id, JobStatus.QUEUED)


def _accepted(request: Request, response: Response, job_id: str, status: JobStatus) -> JobAccepted:
    links = _links(_base_url(request), job_id, [])
    response.headers["Location"] = links.self
    return JobAccepted(id=job_id, status=status, links=links)


def require_callback_allowed(settings: Settings, tenant: Tenant, callback_url: str) -> None:
    if settings.webhook_secret(tenant.id) is None:
        raise ApiError(
            422,
            ErrorCode.INVALID_CALLBACK_URL,
            f"No webhook secret is configured for this tenant ({tenant.id}): set CHINFIX_WEBHOOK_SECRETS.",
        )
    try:
        check_callback_url(callback_url, settings.callback_allow)
    except CallbackRefused as refused:
        raise ApiError(422, ErrorCode.INVALID_CALLBACK_URL, refused.message) from None


def create_job(
    request: Request,
    tenant: Tenant,
    job_id: str,
    data: bytes,
    options: EditOptions,
    code_bytes: bytes | None,
    **origin: str | None,
) -> None:
    """Count the job against the tenant's quota, then store and queue it."""
    settings = request.app.state.settings
    queue: Queue = request.app.state.queue
    store = _store(request)
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
        store.create(job_id, data, options, tenant.owner, enqueue, code_bytes=code_bytes, **origin)
    except RedisError:
        store.release_slot(tenant.owner, job_id)
        raise


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
    return job_view(record, _base_url(request))


VARIANT_FIELDS = ("strength", "refine")


@jobs_router.post(
    "/jobs/{job_id}/variants",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra={**variant_request_schema(VARIANT_FIELDS), "parameters": [idempotency_parameter()]},
    operation_id="submit_variant",
    responses={
        202: {"links": job_links(), "headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}},
        **error_responses(401, 404, 409, 422, 429, 503),
    },
    summary="Edit a finished job's photo again with a new strength and/or refine, reusing its inversion",
)
async def submit_variant(
    job_id: str, request: Request, response: Response, tenant: Tenant = Depends(current_tenant)
) -> JobAccepted:
    idempotency_key = idempotency_key_of(request)
    parent = await anyio.to_thread.run_sync(_existing_job, request, job_id, tenant)
    refuse_when_queue_full(request)
    store = _store(request)
    try:
        form = await request.form(max_files=0, max_fields=len(VARIANT_FIELDS))
    except StarletteHTTPException as error:
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, f"The form was refused: {error.detail}.") from None
    changes = list(form.multi_items())
    unknown = sorted({name for name, _ in changes} - set(VARIANT_FIELDS))
    if unknown:
        raise ApiError(
            422, ErrorCode.INVALID_OPTIONS, f"A variant changes only {', '.join(VARIANT_FIELDS)}, not {', '.join(unknown)}."
        )
    changed = {name for name, _ in changes}
    options = parse_options([item for item in parent.options.items() if item[0] not in changed] + changes)
    data = await anyio.to_thread.run_sync(store.load_input, job_id)
    has_inversion = await anyio.to_thread.run_sync(store.redis.exists, store.keys.job_inversion(job_id))
    if parent.status is not JobStatus.SUCCEEDED or data is None or not has_inversion:
        raise ApiError(
            409,
            ErrorCode.VARIANT_UNAVAILABLE,
            f"Job {job_id} is {parent.status} and holds no inversion to reuse; variants need a succeeded job of "
            "the full pipeline within its TTL.",
        )
    digest = request_digest(data, options, job_id)
    return await anyio.to_thread.run_sync(
        lambda: queue_job(request, response, tenant, data, options, idempotency_key, digest, variant_of=job_id)
    )


@jobs_router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    operation_id="get_result",
    responses={
        200: {
            "description": "The edited image (return=patch: a PNG placed at Chinfix-Patch-Offset)",
            "content": image_content("image/jpeg", "image/png", "image/webp", "image/heic"),
            "headers": PATCH_OFFSET_HEADER,
        },
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
    headers = {}
    if offset := record.result.get("offset"):
        headers["Chinfix-Patch-Offset"] = f"{offset['left']},{offset['top']}"
    return Response(content=data, media_type=record.result["content_type"], headers=headers)


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
        settled = store.fail_dropped_from_queue(record)
    else:
        settled = store.fail_if_worker_lost(record)
    if settled.status is not record.status and settled.callback_url:
        schedule_callback(store.redis, request.app.state.settings, job_id)
    return settled


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


def _links(base_url: str, job_id: str, debug_names: list[str]) -> JobLinks:
    base = f"{base_url}/jobs/{job_id}"
    return JobLinks(
        self=base, result=f"{base}/result", debug={name: f"{base}/debug/{name}" for name in debug_names}
    )


def job_view(record: JobRecord, base_url: str) -> JobView:
    """What GET /jobs/{id} answers and a callback carries; links start at `base_url`."""
    links = _links(base_url, record.id, record.debug_images)
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
        callback=record.callback,
        variant_of=record.variant_of,
        links=links,
    )
