"""Up to B jobs at once in one worker process (`CHINFIX_WORKER_BATCH` = B > 1).

B RQ workers, one per thread, drain the same queue in this process; RQ stays the queue and every job runs the
ordinary `run_edit_job`, so its record, progress and lease stay its own. The CPU stages of the B jobs (decode,
detection, alignment, parsing, paste-back, encoding) overlap on the threads; their inversions go through one
`GpuBatcher`, which stacks the crops of the jobs that reach the invert stage together, and so do their diffuse
refinements.

A SIGKILL takes every thread down with the process, so every running job's lease lapses and it ends
`worker_lost`, as with one job at a time. Limits: RQ's job timeout is raised into the job's thread between Python
bytecodes (`TimerDeathPenalty`), so it cannot interrupt one long C call; the pipeline's calls are short.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty

from worker.batcher import BatchingDiffuser, BatchingInverter, GpuBatcher
from worker.registry import ModelRegistry

log = logging.getLogger("chinfix.worker")

STOP_POLL_SECONDS = 1
"""An idle thread's longest wait for a job before it checks for a stop request."""


class ThreadWorker(SimpleWorker):
    """An RQ SimpleWorker that runs on a thread other than the main one: the main thread owns the signals, the
    job timeout is a timer, and an idle wait for a job is short enough to notice a stop request."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        """Signals reach only the main thread; `run_job_threads` forwards the stop request."""

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        if timeout is None:
            return super().dequeue_job_and_maintain_ttl(None, max_idle_time)
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(STOP_POLL_SECONDS, max_idle_time=STOP_POLL_SECONDS)
            if result is not None:
                return result
        return None


def run_job_threads(
    registry: ModelRegistry, queues: list[Queue], name: str, jobs_at_once: int, max_wait_seconds: float, burst: bool
) -> None:
    """Drain `queues` (in order) with `jobs_at_once` job threads sharing one GPU batcher; return when all have stopped
    (burst: the queue is empty; otherwise SIGINT/SIGTERM, after the running jobs finish)."""
    alone_inverter, alone_diffuser = registry.inverter, registry.diffuser
    with GpuBatcher(jobs_at_once, max_wait_seconds) as batcher:
        registry.inverter = BatchingInverter(batcher)
        registry.diffuser = BatchingDiffuser(batcher)
        workers = [
            ThreadWorker(queues, connection=queues[0].connection, name=f"{name}-{index}") for index in range(jobs_at_once)
        ]
        threads = [
            threading.Thread(
                target=worker.work,
                kwargs={"burst": burst, "logging_level": "INFO", "with_scheduler": False},
                name=f"job-{index}",
            )
            for index, worker in enumerate(workers)
        ]

        def request_stop(signum: int, frame: FrameType | None) -> None:
            log.info("stopping after the running jobs (signal %d)", signum)
            for worker in workers:
                worker._stop_requested = True

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for thread in threads:
                thread.start()
            log.info("worker %s runs up to %d jobs at once", name, jobs_at_once)
            for thread in threads:
                # join in slices: the main thread must stay free to take the stop signals
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            registry.inverter, registry.diffuser = alone_inverter, alone_diffuser
