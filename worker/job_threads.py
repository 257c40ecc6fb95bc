"""How a worker process runs RQ's loop: one job at a time on the main thread, or up to B jobs at once on job threads
(`CHINFIX_WORKER_BATCH` = B > 1); either way restarted after Redis fails under it, and stopped by SIGINT/SIGTERM.

Restarts: RQ's loop gives up ("unhandled exception, quitting") when Redis fails under its own bookkeeping around a
job, or under an idle thread's state writes. A Redis outage is no reason for a GPU worker with loaded models to stop
working: `work_through_outages` waits for Redis to answer and starts the loop again (a fresh RQ worker name, since
the last run may have quit without unregistering from a Redis that was down), until a signal asks it to stop. Each
job thread runs that same policy on its own.

Signals: only the main thread receives them, so `stop_on_signals` owns SIGINT and SIGTERM and sets one event that
every loop of the process checks (RQ's workers install no handlers of their own here): the running jobs finish,
then the loops stop, also while they wait for Redis.

Job threads: B RQ workers, one per thread, drain the same queue in this process; RQ stays the queue and every job
runs the ordinary `run_edit_job`, so its record, progress and lease stay its own. The CPU stages of the B jobs
(decode, detection, alignment, parsing, paste-back, encoding) overlap on the threads; their inversions go through one
`GpuBatcher`, which stacks the crops of the jobs that reach the invert stage together, and so do their diffuse
refinements.

A SIGKILL takes every thread down with the process, so every running job's lease lapses and it ends
`worker_lost`, as with one job at a time. Limits: RQ's job timeout is raised into the job's thread between Python
bytecodes (`TimerDeathPenalty`), so it cannot interrupt one long C call; the pipeline's calls are short.
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import redis
from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty

from worker.batcher import BatchingDiffuser, BatchingInverter, GpuBatcher
from worker.jobs import REDIS_OUTAGE_ERRORS
from worker.registry import ModelRegistry

log = logging.getLogger("chinfix.worker")

STOP_POLL_SECONDS = 1
"""An idle loop's longest wait for a job before it checks for a stop request."""


class InProcessWorker(SimpleWorker):
    """RQ's worker without a fork per job, stopped by the process's `stopping` event instead of signal handlers of
    its own; an idle wait for a job is short enough to notice the event."""

    def __init__(self, *args: object, stopping: threading.Event, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = stopping

    def _install_signal_handlers(self) -> None:
        """`stop_on_signals` owns SIGINT and SIGTERM."""

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        if timeout is None:  # burst: take what is queued, do not wait
            return None if self.stopping.is_set() else super().dequeue_job_and_maintain_ttl(None, max_idle_time)
        while not self.stopping.is_set():
            result = super().dequeue_job_and_maintain_ttl(STOP_POLL_SECONDS, max_idle_time=STOP_POLL_SECONDS)
            if result is not None:
                return result
        return None


class ThreadWorker(InProcessWorker):
    """An in-process worker on a thread other than the main one: its job timeout is a timer, not SIGALRM."""

    death_penalty_class = TimerDeathPenalty


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs (on the main thread); the handlers before it are
    put back after."""
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping after the running jobs (signal %d)", signum)
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_redis(connection: redis.Redis, stopping: threading.Event, longest_wait_s: float = 5.0) -> bool:
    """Ping Redis with backoff until it answers (True) or `stopping` is set (False)."""
    wait = 1.0
    while not stopping.wait(wait):
        try:
            connection.ping()
            return True
        except redis.RedisError as error:
            log.warning("waiting for Redis: %s", error)
            wait = min(wait * 2, longest_wait_s)
    return False


def work_through_outages(new_worker: Callable[[int], InProcessWorker], stopping: threading.Event, burst: bool) -> None:
    """Run RQ's loop on a worker from `new_worker(generation)`, and on a fresh one each time the loop gives up,
    once Redis answers; return when `stopping` is set (burst: after one run)."""
    for generation in itertools.count():
        worker = new_worker(generation)
        try:
            worker.work(burst=burst, logging_level="INFO", with_scheduler=False)
        except REDIS_OUTAGE_ERRORS as error:
            # RQ unregisters the worker on its way out of the loop, which fails too while Redis is down.
            log.warning("RQ worker %s could not unregister: %s", worker.name, error)
        if burst or stopping.is_set():
            return
        log.warning("the queue loop %s stopped (Redis failed under it); starting it again once Redis answers", worker.name)
        if not wait_for_redis(worker.connection, stopping):
            return


def run_job_threads(
    registry: ModelRegistry, queues: list[Queue], name: str, jobs_at_once: int, max_wait_seconds: float, burst: bool
) -> list[int]:
    """Drain `queues` (in order) with `jobs_at_once` job threads sharing one GPU batcher; return when all have stopped
    (burst: the queue is empty; otherwise SIGINT/SIGTERM, after the running jobs finish). Returns how many items each
    GPU batch held, in order."""
    alone_inverter, alone_diffuser = registry.inverter, registry.diffuser
    with GpuBatcher(jobs_at_once, max_wait_seconds) as batcher, stop_on_signals() as stopping:
        registry.inverter = BatchingInverter(batcher)
        registry.diffuser = BatchingDiffuser(batcher)

        def thread_worker(index: int) -> Callable[[int], InProcessWorker]:
            return lambda generation: ThreadWorker(
                queues, connection=queues[0].connection, name=f"{name}-{index}-{generation}", stopping=stopping
            )

        threads = [
            threading.Thread(target=work_through_outages, args=(thread_worker(index), stopping, burst), name=f"job-{index}")
            for index in range(jobs_at_once)
        ]
        try:
            for thread in threads:
                thread.start()
            log.info("worker %s runs up to %d jobs at once", name, jobs_at_once)
            for thread in threads:
                # join in slices: the main thread must stay free to take the stop signals
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            registry.inverter, registry.diffuser = alone_inverter, alone_diffuser
    return batcher.batch_sizes
