"""`chinfix worker`: load the models once, then drain the queue in this process (no fork per job).

RQ's loop gives up ("unhandled exception, quitting") when Redis fails under its own bookkeeping around a job.
A Redis outage is no reason for a GPU worker with loaded models to exit: `run_worker` waits for Redis to come
back and starts the loop again, until a signal asks it to stop.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import secrets
import threading

import redis
from rq import Queue, SimpleWorker

from chinfix.contract import RedisKeys
from chinfix.jobs import connect_redis
from chinfix.settings import Settings
from worker.job_threads import run_job_threads
from worker.registry import ModelRegistry, activate

log = logging.getLogger("chinfix.worker")

HEARTBEAT_SECONDS = 10


class WorkerHeartbeat:
    """Publishes this worker's name, device and missing models under a short TTL; /readyz reads them."""

    def __init__(self, connection: redis.Redis, key: str, description: dict) -> None:
        self.connection = connection
        self.key = key
        self.description = description
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _publish(self) -> None:
        self.connection.set(self.key, json.dumps(self.description), ex=HEARTBEAT_SECONDS * 3)

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self._publish()
            except redis.RedisError:
                log.warning("heartbeat to Redis failed", exc_info=True)

    def __enter__(self) -> WorkerHeartbeat:
        self._publish()
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join()
        try:
            self.connection.delete(self.key)
        except redis.RedisError:
            log.warning("could not remove the heartbeat %s; it expires by itself", self.key)


class QueueWorker(SimpleWorker):
    """RQ's in-process worker that remembers whether a signal asked it to stop."""

    stop_signalled = False

    def request_stop(self, signum, frame) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)


def wait_for_redis(connection: redis.Redis, longest_wait_s: float = 5.0) -> bool:
    """Ping Redis with backoff until it answers (True) or SIGINT/SIGTERM arrives (False)."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    wait = 1.0
    while not stopping.wait(wait):
        try:
            connection.ping()
            return True
        except redis.RedisError as error:
            log.warning("waiting for Redis: %s", error)
            wait = min(wait * 2, longest_wait_s)
    return False


def run_worker(settings: Settings, burst: bool = False) -> int:
    connection = connect_redis(settings)
    registry = ModelRegistry.load(settings)
    activate(registry)
    if registry.missing:
        log.warning(
            "models missing: %s; jobs will fail with model_missing until `chinfix models pull`",
            ", ".join(registry.missing),
        )
    if registry.device.type == "cpu" and registry.generator is not None and registry.generator.img_resolution >= 512:
        log.warning(
            "this worker edits on the CPU: a %d px edit takes many minutes there (`chinfix bench pipeline` "
            "measures it), likely past CHINFIX_JOB_TIMEOUT_SECONDS=%d; use a GPU or raise the timeout",
            registry.generator.img_resolution,
            settings.job_timeout_seconds,
        )
    name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    description = {"name": name, **registry.describe()}
    # RQ takes jobs from its queues in order: photos first, training shards only when no photo waits
    queues = [Queue(queue_name, connection=connection)
              for queue_name in (settings.queue_name, settings.effective_training_queue)]
    with WorkerHeartbeat(connection, RedisKeys(settings.key_prefix).worker(name), description):
        log.info("worker %s on %s, queues %r", name, registry.device, [queue.name for queue in queues])
        if settings.worker_batch > 1:
            run_job_threads(registry, queues, name, settings.worker_batch, settings.batch_wait_ms / 1000.0, burst)
            return 0
        for generation in itertools.count():
            # A fresh RQ name per run: the last run may have quit without unregistering from a Redis that was down.
            worker = QueueWorker(queues, connection=connection, name=f"{name}-{generation}")
            worker.work(burst=burst, logging_level="INFO", with_scheduler=False)
            if burst or worker.stop_signalled:
                break
            log.warning("the queue loop stopped (Redis failed under it); starting it again once Redis answers")
            if not wait_for_redis(connection):
                break
    return 0
