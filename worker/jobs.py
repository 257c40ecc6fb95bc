"""The RQ job function: one photo through the pipeline, outcome written to the job record.

The job record, not RQ's own status, is what clients see, so every way out of `run_edit_job` leaves the record
`succeeded` or `failed` with a code and a sentence.

Redis may drop out while a job runs (a restart, a failover, a network blip). Progress and lease renewals are
best effort; reading the job and recording its outcome are retried with backoff (`RedisRetry`), the outcome
kept in memory meanwhile, so the job still ends in a final state once Redis is back and the worker goes on.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from chinfix.codes import read_code
from chinfix.contract import EditOptions, ErrorCode, OutputFormat, Stage
from chinfix.errors import ChinfixError
from chinfix.imaging import ImageLimits, decode_image, encode_image
from chinfix.jobs import JobStore
from chinfix.callbacks import schedule_callback
from chinfix.outputs import encode_result
from worker.progress import ThrottledProgress
from worker.registry import ModelRegistry, active_registry
from worker.variants import inversion_from_bytes, inversion_to_bytes

log = logging.getLogger("chinfix.worker")

T = TypeVar("T")

REDIS_OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)
"""What a Redis that is down, restarting or still loading its data raises (BusyLoadingError is a ConnectionError)."""


class RedisRetry:
    """Calls a Redis operation again, with exponential backoff, until it succeeds or `give_up_after_s` passes."""

    def __init__(self, give_up_after_s: float, first_wait_s: float = 0.2, longest_wait_s: float = 5.0) -> None:
        self.give_up_after_s = give_up_after_s
        self.first_wait_s = first_wait_s
        self.longest_wait_s = longest_wait_s

    def __call__(self, operation: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.give_up_after_s
        wait = self.first_wait_s
        while True:
            try:
                return operation()
            except REDIS_OUTAGE_ERRORS as error:
                if time.monotonic() + wait > deadline:
                    raise
                log.warning("Redis unavailable while %s (%s); retrying in %.1f s", what, error, wait)
                time.sleep(wait)
                wait = min(wait * 2, self.longest_wait_s)


class LeaseKeeper:
    """Calls `renew` from a thread every `interval` seconds while a job runs: if the process dies, its lease
    expires and whoever watches it learns that the worker is gone."""

    def __init__(self, renew: Callable[[], None], interval: float, name: str) -> None:
        self.renew = renew
        self.interval = interval
        self.name = name
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True)

    def _renew(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.renew()
            except redis.RedisError as error:
                log.warning("could not renew the lease of %s: %s", self.name, error)

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join()


def run_edit_job(job_id: str) -> None:
    registry = active_registry()
    store = JobStore.from_settings(registry.settings, get_current_job().connection)
    retry = RedisRetry(registry.settings.redis_retry_seconds)
    if not retry(lambda: store.mark_running(job_id), f"starting job {job_id}"):
        log.info("job %s was deleted or already taken; skipping", job_id)
        return
    with LeaseKeeper(lambda: store.renew_lease(job_id), store.lease_seconds / 3, f"job {job_id}"):
        record_outcome = outcome_of(store, job_id, registry, retry)
    if not retry(record_outcome, f"recording the outcome of job {job_id}"):
        log.info("job %s ended meanwhile (deleted, or failed as worker_lost); its outcome was dropped", job_id)
    retry(lambda: announce(store, registry, job_id), f"scheduling the callback of job {job_id}")


def announce(store: JobStore, registry: ModelRegistry, job_id: str) -> None:
    """Queue the callback of a job that ended, if it asked for one (once per job: `schedule_callback`)."""
    record = store.get(job_id)
    if record is not None and record.callback_url:
        schedule_callback(store.redis, registry.settings, job_id)


def outcome_of(store: JobStore, job_id: str, registry: ModelRegistry, retry: RedisRetry) -> Callable[[], bool]:
    """Run the job; return the write that records how it ended, for the caller to retry until Redis takes it."""
    try:
        return edit(store, job_id, registry, retry)
    except ChinfixError as error:
        log.info("job %s failed: %s (%s)", job_id, error.code, error.message)
        code, message, report = error.code, error.message, error.report  # `error` is unbound after the block
        return lambda: store.fail(job_id, code, message, report)
    except JobTimeoutException:
        message = f"The edit took longer than the {registry.settings.job_timeout_seconds} s limit."
        return lambda: store.fail(job_id, ErrorCode.JOB_TIMEOUT, message)
    except Exception:
        incident = secrets.token_hex(8)
        log.exception("job %s hit an internal error, incident %s", job_id, incident)
        message = f"Something went wrong on our side. Quote incident {incident} if it happens again."
        return lambda: store.fail(job_id, ErrorCode.INTERNAL_ERROR, message)


def edit(store: JobStore, job_id: str, registry: ModelRegistry, retry: RedisRetry) -> Callable[[], bool]:
    record = retry(lambda: store.get(job_id), f"reading job {job_id}")
    data = retry(lambda: store.load_input(job_id), f"reading the photo of job {job_id}")
    if record is None or data is None:
        raise ChinfixError(ErrorCode.JOB_NOT_FOUND, "The photo of this job expired before a worker took it.")
    options = EditOptions.model_validate(record.options)
    settings = registry.settings
    started = time.perf_counter()
    limits = ImageLimits(settings.max_pixels, settings.min_side, decode_budget_bytes=settings.decode_budget_bytes)
    photo = decode_image(data, limits)
    progress = ThrottledProgress(lambda stage, value: report_progress(store, job_id, stage, value))
    if record.variant_of:
        reused = retry(lambda: store.load_inversion(record.variant_of), f"reading the inversion of job {record.variant_of}")
        if reused is None:
            raise ChinfixError(
                ErrorCode.VARIANT_UNAVAILABLE,
                f"The inversion of job {record.variant_of} expired or was deleted; submit the photo again.",
            )
        result = registry.edit_portrait(photo.rgb, options, registry, progress, reuse=inversion_from_bytes(reused))
    else:
        code_bytes = retry(lambda: store.load_code(job_id), f"reading the code of job {job_id}")
        # Passed only when sent, so pipelines that never take a code (CHINFIX_PIPELINE plug-ins) keep working.
        code = {"code": read_code(code_bytes)} if code_bytes is not None else {}
        result = registry.edit_portrait(photo.rgb, options, registry, progress, **code)
    inversion = inversion_to_bytes(result.inversion) if result.inversion is not None else None
    encoded = encode_result(result.image, result.photo_mask, photo, data, options)
    debug_images = {name: encode_image(image, OutputFormat.PNG) for name, image in result.debug_images.items()}
    report = dict(result.report, output=encoded.details, total_ms=round((time.perf_counter() - started) * 1000.0, 1))
    log.info("job %s edited in %.0f ms (%s)", job_id, report["total_ms"], options.return_kind)
    result_meta = {"width": encoded.width, "height": encoded.height, "content_type": encoded.content_type}
    if "offset" in encoded.details:
        result_meta["offset"] = encoded.details["offset"]
    kept_debug_images = debug_images if options.debug else {}
    return lambda: store.succeed(job_id, encoded.data, result_meta, report, kept_debug_images, inversion)


def report_progress(store: JobStore, job_id: str, stage: Stage, value: float) -> None:
    """Progress is best effort: a Redis outage must not stop the edit, whose outcome is retried at the end."""
    try:
        store.report_progress(job_id, stage, value)
    except redis.RedisError as error:
        log.warning("could not record the progress of job %s: %s", job_id, error)
