"""`chinfix worker`: load the models once, then drain the queue in this process (no fork per job), riding out
Redis outages (`worker.job_threads.work_through_outages`) until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import socket
import secrets
import threading

import redis
from rq import Queue

from chinfix.contract import RedisKeys
from chinfix.jobs import connect_redis
from chinfix.settings import Settings
from worker.job_threads import InProcessWorker, run_job_threads, stop_on_signals, work_through_outages
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
        with stop_on_signals() as stopping:
            work_through_outages(
                lambda generation: InProcessWorker(queues, connection=connection, name=f"{name}-{generation}", stopping=stopping),
                stopping,
                burst,
            )
    return 0
