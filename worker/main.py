"""`chinfix worker`: load the models once, then drain the queue in this process (no fork per job)."""

from __future__ import annotations

import json
import logging
import os
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
        self.connection.delete(self.key)


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
    with WorkerHeartbeat(connection, RedisKeys(settings.key_prefix).worker(name), description):
        queue = Queue(settings.queue_name, connection=connection)
        log.info("worker %s on %s, queue %r", name, registry.device, settings.queue_name)
        if settings.worker_batch > 1:
            run_job_threads(registry, queue, name, settings.worker_batch, settings.batch_wait_ms / 1000.0, burst)
            return 0
        worker = SimpleWorker([queue], connection=connection, name=name)
        worker.work(burst=burst, logging_level="INFO", with_scheduler=False)
    return 0
