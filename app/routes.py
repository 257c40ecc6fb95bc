"""The HTTP routes: submit an edit, follow a job, fetch its result, probes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQJobStatus
from starlette.datastructures import UploadFile

from app.auth import require_api_key
from app.errors import ApiError
from app.idempotency import claim_idempotency_key, idempotency_key_of, release_idempotency_key, request_digest
from app.schemas import JobAccepted, JobLinks, JobView, Readiness, ResultInfo, WorkerView, timestamp
from chinfix.errors import describe_validation_errors
from chinfix.contract import DEBUG_IMAGE_NAMES, EditOptions, ErrorCode, JobStatus
from chinfix.imaging import ImageLimits, decode_image
from chinfix.callbacks import CallbackRefused, check_callback_url, schedule_callback
from chinfix.jobs import JobRecord, JobStore, new_job_id
from chinfix.settings import Settings

EDIT_JOB_FUNCTION = "worker.jobs.run_edit_job"
MULTIPART_OVERHEAD_BYTES = 64 * 1024
QUEUE_FULL_RETRY_AFTER_S = 60
RQ_ENDED_STATUSES = {RQJobStatus.FINISHED, RQJobStatus.FAILED, RQJobStatus.STOPPED, RQJobStatus.CANCELED}

health_router = APIRouter(tags=["health"])
jobs_router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


def _edit_request_schema() -> dict:
    options = EditOptions.model_json_schema(by_alias=True)
    properties = {"image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP or HEIC photo"}}
    properties.update(options["properties"])
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "properties": properties}
                }
            },
        }
    }


@jobs_router.post(
    "/edit",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra=_edit_request_schema(),
    summary="Submit a portrait; the double chin is removed in the background",
)
async def submit_edit(request: Request, response: Response, tenant: str = Depends(require_api_key)) -> JobAccepted:
    settings = request.app.state.settings
    idempotency_key = idempotency_key_of(request)
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
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Send the photo as a multipart file field named 'image'.")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise _upload_too_large(settings.max_upload_bytes)
    fields = {key: value for key, value in form.items() if key != "image"}
    callback_url = fields.pop("callback_url", None)
    options = parse_options(fields)
    limits = ImageLimits(max_pixels=settings.max_pixels, min_side=settings.min_side)
    await run_in_threadpool(decode_image, data, limits)
    if callback_url is not None:
        await run_in_threadpool(require_callback_allowed, settings, tenant, str(callback_url))
    digest = request_digest(data, options, callback_url)
    return await run_in_threadpool(
        queue_job, request, response, data, options, tenant, idempotency_key, digest, callback_url=callback_url
    )


def queue_job(
    request: Request,
    response: Response,
    data: bytes,
    options: EditOptions,
    tenant: str,
    idempotency_key: str | None,
    request_digest: str,
    callback_url: str | None = None,
    variant_of: str | None = None,
) -> JobAccepted:
    """Store and queue a job, or, for an Idempotency-Key this tenant used before on the same request, answer
    with the job that request created (nothing queued)."""
    settings = request.app.state.settings
    queue: Queue = request.app.state.queue
    store = _store(request)
    job_id = new_job_id()
    if idempotency_key is not None:
        earlier = claim_idempotency_key(store, tenant, idempotency_key, job_id, request_digest)
        if earlier is not None:
            return _accepted(request, response, earlier, store.get(earlier))
    try:
        store.create(
            job_id,
            data,
            options,
            enqueue=lambda pipe: queue.enqueue_call(
                EDIT_JOB_FUNCTION,
                args=(job_id,),
                job_id=job_id,
                timeout=settings.job_timeout_seconds,
                result_ttl=settings.job_ttl_seconds,
                failure_ttl=settings.job_ttl_seconds,
                ttl=settings.job_ttl_seconds,
                pipeline=pipe,
            ),
            tenant=tenant,
            callback_url=callback_url,
            callback_base_url=_base_url(request) if callback_url else None,
            variant_of=variant_of,
        )
    except Exception:
        if idempotency_key is not None:
            release_idempotency_key(store, tenant, idempotency_key)
        raise
    return _accepted(request, response, job_id, None)


def _accepted(request: Request, response: Response, job_id: str, record: JobRecord | None) -> JobAccepted:
    links = _links(_base_url(request), job_id, [])
    response.headers["Location"] = links.self
    return JobAccepted(id=job_id, status=record.status if record else JobStatus.QUEUED, links=links)


def require_callback_allowed(settings: Settings, tenant: str, callback_url: str) -> None:
    if settings.webhook_secret(tenant) is None:
        raise ApiError(
            422,
            ErrorCode.INVALID_CALLBACK_URL,
            f"No webhook secret is configured for this tenant ({tenant}): set CHINFIX_WEBHOOK_SECRETS.",
        )
    try:
        check_callback_url(callback_url, settings.callback_allow)
    except CallbackRefused as refused:
        raise ApiError(422, ErrorCode.INVALID_CALLBACK_URL, refused.message) from None


def parse_options(fields: dict[str, object]) -> EditOptions:
    if any(isinstance(value, UploadFile) for value in fields.values()):
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Only the field 'image' may be a file.")
    try:
        return EditOptions.model_validate(fields)
    except ValidationError as error:
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, describe_validation_errors(error.errors())) from None


@jobs_router.get("/jobs/{job_id}", response_model=JobView, summary="State, stage, progress and outcome of a job")
def get_job(job_id: str, request: Request) -> JobView:
    record = _existing_job(request, job_id)
    return job_view(record, _base_url(request))


VARIANT_FIELDS = ("strength", "refine")


@jobs_router.post(
    "/jobs/{job_id}/variants",
    status_code=202,
    response_model=JobAccepted,
    summary="Edit a finished job's photo again with a new strength and/or refine, reusing its inversion",
)
async def submit_variant(
    job_id: str, request: Request, response: Response, tenant: str = Depends(require_api_key)
) -> JobAccepted:
    idempotency_key = idempotency_key_of(request)
    parent = _existing_job(request, job_id)
    store = _store(request)
    form = await request.form(max_files=0, max_fields=len(VARIANT_FIELDS) + 1)
    changes = {key: value for key, value in form.items()}
    unknown = sorted(set(changes) - set(VARIANT_FIELDS))
    if unknown:
        raise ApiError(
            422, ErrorCode.INVALID_OPTIONS, f"A variant changes only {', '.join(VARIANT_FIELDS)}, not {', '.join(unknown)}."
        )
    options = parse_options({**parent.options, **changes})
    data = await run_in_threadpool(store.load_input, job_id)
    has_inversion = await run_in_threadpool(store.redis.exists, store.keys.job_inversion(job_id))
    if parent.status is not JobStatus.SUCCEEDED or data is None or not has_inversion:
        raise ApiError(
            409,
            ErrorCode.VARIANT_UNAVAILABLE,
            f"Job {job_id} is {parent.status} and holds no inversion to reuse; variants need a succeeded job of "
            "the full pipeline within its TTL.",
        )
    digest = request_digest(data, options, job_id)
    return await run_in_threadpool(
        queue_job, request, response, data, options, tenant, idempotency_key, digest, variant_of=job_id
    )


@jobs_router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}, "image/heic": {}}}},
    summary="The edited image",
)
def get_result(job_id: str, request: Request) -> Response:
    record = _existing_job(request, job_id)
    if record.status is JobStatus.FAILED:
        error = record.error or {}
        raise ApiError(409, ErrorCode.JOB_FAILED, f"The job failed ({error.get('code')}): {error.get('message')}")
    if record.status is not JobStatus.SUCCEEDED or record.result is None:
        raise ApiError(409, ErrorCode.JOB_NOT_FINISHED, f"The job is {record.status}; poll /jobs/{job_id}.")
    data = _store(request).load_result(job_id)
    if data is None:
        raise _job_not_found(job_id)
    headers = {}
    if offset := record.result.get("offset"):
        headers["Chinfix-Patch-Offset"] = f"{offset['left']},{offset['top']}"
    return Response(content=data, media_type=record.result["content_type"], headers=headers)


@jobs_router.get(
    "/jobs/{job_id}/debug/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
    summary="An intermediate image (jobs submitted with debug=true)",
)
def get_debug_image(job_id: str, name: str, request: Request) -> Response:
    record = _existing_job(request, job_id)
    data = _store(request).load_debug_image(job_id, name) if name in record.debug_images else None
    if data is None:
        raise ApiError(
            404,
            ErrorCode.NOT_FOUND,
            f"No debug image '{name}' for this job; it has {record.debug_images or 'none'} "
            f"(names: {', '.join(DEBUG_IMAGE_NAMES)}; submit with debug=true).",
        )
    return Response(content=data, media_type="image/png")


@jobs_router.delete("/jobs/{job_id}", status_code=204, summary="Cancel a queued job or delete a finished one")
def delete_job(job_id: str, request: Request) -> Response:
    record = _existing_job(request, job_id)
    if record.status is JobStatus.RUNNING:
        raise ApiError(409, ErrorCode.JOB_RUNNING, "The job is running and cannot be cancelled; delete it once it ends.")
    _store(request).delete(job_id, record.debug_images)
    try:
        Job.fetch(job_id, connection=request.app.state.redis).delete(remove_from_queue=True)
    except NoSuchJobError:
        pass
    return Response(status_code=204)


@health_router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get("/readyz", response_model=Readiness, summary="Redis reachable and a worker with its models")
def readyz(request: Request, response: Response) -> Readiness:
    readiness = check_readiness(request)
    response.status_code = 200 if readiness.ready else 503
    return readiness


def check_readiness(request: Request) -> Readiness:
    store = _store(request)
    try:
        store.redis.ping()
        heartbeats = store.worker_heartbeats()
    except RedisError as error:
        return Readiness(ready=False, redis=False, workers=[], problems=[f"Redis is unreachable: {error}"])
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


def _existing_job(request: Request, job_id: str) -> JobRecord:
    """The job's record, with a job that can no longer finish (its worker died, its queue entry is gone)
    settled as failed first, so a client never polls forever."""
    store = _store(request)
    record = store.get(job_id)
    if record is None:
        raise _job_not_found(job_id)
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


def _job_not_found(job_id: str) -> ApiError:
    return ApiError(404, ErrorCode.JOB_NOT_FOUND, f"No job {job_id}: it never existed, was deleted, or expired.")


def _upload_too_large(limit: int) -> ApiError:
    return ApiError(413, ErrorCode.UPLOAD_TOO_LARGE, f"The upload is larger than the {limit / 1e6:g} MB limit.")


def _base_url(request: Request) -> str:
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


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
