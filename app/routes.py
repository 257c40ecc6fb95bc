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
from app.schemas import JobAccepted, JobLinks, JobView, Readiness, ResultInfo, WorkerView, timestamp
from chinfix.codes import MAX_CODE_BYTES, read_code
from chinfix.errors import ChinfixError, describe_validation_errors
from chinfix.contract import DEBUG_IMAGE_NAMES, EditOptions, ErrorCode, JobStatus
from chinfix.imaging import ImageLimits, decode_image
from chinfix.jobs import JobRecord, JobStore, new_job_id

EDIT_JOB_FUNCTION = "worker.jobs.run_edit_job"
FILE_FIELDS = ("image", "code")
MULTIPART_OVERHEAD_BYTES = 64 * 1024
QUEUE_FULL_RETRY_AFTER_S = 60
RQ_ENDED_STATUSES = {RQJobStatus.FINISHED, RQJobStatus.FAILED, RQJobStatus.STOPPED, RQJobStatus.CANCELED}

health_router = APIRouter(tags=["health"])
jobs_router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


def _edit_request_schema() -> dict:
    options = EditOptions.model_json_schema(by_alias=True)
    properties = {
        "image": {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP photo"},
        "code": {
            "type": "string",
            "format": "binary",
            "description": "optional: the face's latent code (.npy, 1 x num_ws x w_dim or 1 x w_dim float32); "
            "skips the inversion",
        },
    }
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
async def submit_edit(request: Request, response: Response) -> JobAccepted:
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
    form = await request.form(max_files=2, max_fields=20)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Send the photo as a multipart file field named 'image'.")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise _upload_too_large(settings.max_upload_bytes)
    options = parse_options({key: value for key, value in form.items() if key not in FILE_FIELDS})
    limits = ImageLimits(max_pixels=settings.max_pixels, min_side=settings.min_side)
    await run_in_threadpool(decode_image, data, limits)
    code_bytes = await read_code_field(form.get("code"))

    job_id = new_job_id()
    store = _store(request)
    await run_in_threadpool(
        store.create,
        job_id,
        data,
        options,
        code_bytes=code_bytes,
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
    )
    links = _links(request, job_id, [])
    response.headers["Location"] = links.self
    return JobAccepted(id=job_id, status=JobStatus.QUEUED, links=links)


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


def parse_options(fields: dict[str, object]) -> EditOptions:
    if not all(isinstance(value, str) for value in fields.values()):
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, "Only the fields 'image' and 'code' may be files.")
    try:
        return EditOptions.model_validate(fields)
    except ValidationError as error:
        raise ApiError(422, ErrorCode.INVALID_OPTIONS, describe_validation_errors(error.errors())) from None


@jobs_router.get("/jobs/{job_id}", response_model=JobView, summary="State, stage, progress and outcome of a job")
def get_job(job_id: str, request: Request) -> JobView:
    record = _existing_job(request, job_id)
    return _job_view(request, record)


@jobs_router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}}},
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
    return Response(content=data, media_type=record.result["content_type"])


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


def _job_not_found(job_id: str) -> ApiError:
    return ApiError(404, ErrorCode.JOB_NOT_FOUND, f"No job {job_id}: it never existed, was deleted, or expired.")


def _upload_too_large(limit: int) -> ApiError:
    return ApiError(413, ErrorCode.UPLOAD_TOO_LARGE, f"The upload is larger than the {limit / 1e6:g} MB limit.")


def _base_url(request: Request) -> str:
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


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
