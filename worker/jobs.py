"""The RQ job function: one photo through the pipeline, outcome written to the job record.

The job record, not RQ's own status, is what clients see, so every way out of `run_edit_job` leaves the record
`succeeded` or `failed` with a code and a sentence.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from chinfix.codes import read_code
from chinfix.contract import EditOptions, ErrorCode, OutputFormat
from chinfix.errors import ChinfixError
from chinfix.imaging import ImageLimits, decode_image, encode_image
from chinfix.jobs import JobStore
from worker.progress import ThrottledProgress
from worker.registry import ModelRegistry, active_registry

log = logging.getLogger("chinfix.worker")


class LeaseKeeper:
    """Renews the job's lease from a thread while the pipeline runs: if the process dies, the lease expires."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._renew, name=f"lease-{job_id[:8]}", daemon=True)

    def _renew(self) -> None:
        while not self.stopped.wait(self.store.lease_seconds / 3):
            try:
                self.store.renew_lease(self.job_id)
            except Exception:
                log.warning("could not renew the lease of job %s", self.job_id, exc_info=True)

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join()


def run_edit_job(job_id: str) -> None:
    registry = active_registry()
    store = JobStore.from_settings(registry.settings, get_current_job().connection)
    if not store.mark_running(job_id):
        log.info("job %s was deleted or already taken; skipping", job_id)
        return
    with LeaseKeeper(store, job_id):
        try:
            edit_and_store(store, job_id, registry)
        except ChinfixError as error:
            log.info("job %s failed: %s (%s)", job_id, error.code, error.message)
            store.fail(job_id, error.code, error.message)
        except JobTimeoutException:
            limit = registry.settings.job_timeout_seconds
            store.fail(job_id, ErrorCode.JOB_TIMEOUT, f"The edit took longer than the {limit} s limit.")
        except Exception:
            incident = secrets.token_hex(8)
            log.exception("job %s hit an internal error, incident %s", job_id, incident)
            store.fail(
                job_id,
                ErrorCode.INTERNAL_ERROR,
                f"Something went wrong on our side. Quote incident {incident} if it happens again.",
            )


def edit_and_store(store: JobStore, job_id: str, registry: ModelRegistry) -> None:
    record = store.get(job_id)
    data = store.load_input(job_id)
    if record is None or data is None:
        raise ChinfixError(ErrorCode.JOB_NOT_FOUND, "The photo of this job expired before a worker took it.")
    options = EditOptions.model_validate(record.options)
    settings = registry.settings
    started = time.perf_counter()
    photo = decode_image(data, ImageLimits(max_pixels=settings.max_pixels, min_side=settings.min_side))
    progress = ThrottledProgress(lambda stage, value: store.report_progress(job_id, stage, value))
    code_bytes = store.load_code(job_id)
    # Passed only when sent, so pipelines that never take a code (CHINFIX_PIPELINE plug-ins) keep working.
    code = {"code": read_code(code_bytes)} if code_bytes is not None else {}
    result = registry.edit_portrait(photo.rgb, options, registry, progress, **code)
    encoded = encode_image(result.image, options.output, options.quality)
    debug_images = {name: encode_image(image, OutputFormat.PNG) for name, image in result.debug_images.items()}
    report = dict(result.report, total_ms=round((time.perf_counter() - started) * 1000.0, 1))
    height, width = result.image.shape[:2]
    store.succeed(
        job_id,
        encoded,
        {"width": width, "height": height, "content_type": options.output.content_type},
        report,
        debug_images if options.debug else {},
    )
    log.info("job %s succeeded in %.0f ms (%s)", job_id, report["total_ms"], options.return_kind)
