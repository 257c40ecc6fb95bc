"""The job record in Redis: written by the API (create, delete) and the worker (progress, outcome).

A record is one hash; the input, the result and debug images are separate binary keys. Every key of a job
carries the same TTL, so an expired job disappears whole.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from chinfix.contract import EditOptions, ErrorCode, JobStatus, RedisKeys, Stage
from chinfix.settings import Settings


def new_job_id() -> str:
    """128 random bits: the id is the only handle on a user's photo, so it must not be guessable."""
    return secrets.token_hex(16)


def connect_redis(settings: Settings) -> redis.Redis:
    """Bytes in, bytes out (RQ needs that); short timeouts so a dead Redis is an answer, not a hang."""
    return redis.Redis.from_url(
        settings.effective_redis_url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
    )


SUCCEEDED_OUTCOME = JobStatus.SUCCEEDED.value


def failed_outcome(code: ErrorCode) -> str:
    """The field of the outcomes hash that counts jobs failed with `code`."""
    return f"{JobStatus.FAILED}:{code}"


def read_outcomes(connection: redis.Redis, keys: RedisKeys) -> dict[tuple[JobStatus, str], int]:
    """Jobs ended so far, by (status, error code); the code is "" for succeeded jobs."""
    counts = {}
    for field, count in connection.hgetall(keys.outcomes()).items():
        status, _, code = field.decode().partition(":")
        counts[(JobStatus(status), code)] = int(count)
    return counts


def now() -> float:
    return time.time()


@dataclass
class JobRecord:
    id: str
    status: JobStatus
    options: dict[str, Any]
    created_at: float
    stage: Stage | None = None
    progress: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    debug_images: list[str] = field(default_factory=list)

    @classmethod
    def from_hash(cls, job_id: str, fields: dict[bytes, bytes]) -> JobRecord:
        values = {key.decode(): json.loads(value) for key, value in fields.items()}
        return cls(
            id=job_id,
            status=JobStatus(values["status"]),
            options=values.get("options", {}),
            created_at=values["created_at"],
            stage=Stage(values["stage"]) if values.get("stage") else None,
            progress=values.get("progress", 0.0),
            started_at=values.get("started_at"),
            finished_at=values.get("finished_at"),
            error=values.get("error"),
            result=values.get("result"),
            report=values.get("report", {}),
            debug_images=values.get("debug_images", []),
        )


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in fields.items()}


class JobStore:
    """All reads and writes of job data. Both sides use it, so the record layout lives here only."""

    def __init__(self, connection: redis.Redis, keys: RedisKeys, ttl_seconds: int, lease_seconds: int) -> None:
        self.redis = connection
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds

    @classmethod
    def from_settings(cls, settings: Settings, connection: redis.Redis) -> JobStore:
        return cls(connection, RedisKeys(settings.key_prefix), settings.job_ttl_seconds, settings.lease_seconds)

    def create(
        self,
        job_id: str,
        input_bytes: bytes,
        options: EditOptions,
        enqueue: Callable[[redis.client.Pipeline], object],
        code_bytes: bytes | None = None,
    ) -> JobRecord:
        """Store the input (and the ready-made code, if any) and a queued record, and queue the job (`enqueue` adds
        it to the pipeline) in one transaction: a Redis failure leaves neither a record that no worker will take
        nor a job without input."""
        record = JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            options=options.model_dump(mode="json", by_alias=True),
            created_at=now(),
        )
        with self.redis.pipeline() as pipe:
            # First: RQ starts the transaction (MULTI) itself, which must come before any queued command.
            enqueue(pipe)
            pipe.set(self.keys.job_input(job_id), input_bytes, ex=self.ttl_seconds)
            if code_bytes is not None:
                pipe.set(self.keys.job_code(job_id), code_bytes, ex=self.ttl_seconds)
            pipe.hset(
                self.keys.job(job_id),
                mapping=_encode(
                    {"status": record.status, "options": record.options, "created_at": record.created_at}
                ),
            )
            pipe.expire(self.keys.job(job_id), self.ttl_seconds)
            pipe.execute()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        fields = self.redis.hgetall(self.keys.job(job_id))
        if not fields:
            return None
        return JobRecord.from_hash(job_id, fields)

    def load_input(self, job_id: str) -> bytes | None:
        return self.redis.get(self.keys.job_input(job_id))

    def load_code(self, job_id: str) -> bytes | None:
        """The .npy bytes of the code sent with the photo; None when there was none."""
        return self.redis.get(self.keys.job_code(job_id))

    def load_result(self, job_id: str) -> bytes | None:
        return self.redis.get(self.keys.job_result(job_id))

    def load_debug_image(self, job_id: str, name: str) -> bytes | None:
        return self.redis.get(self.keys.job_debug(job_id, name))

    def mark_running(self, job_id: str) -> bool:
        """Queued → running, with a fresh lease. False when the job is gone or no longer queued."""
        key = self.keys.job(job_id)
        with self.redis.pipeline() as pipe:
            pipe.watch(key)
            status = pipe.hget(key, "status")
            if status is None or json.loads(status) != JobStatus.QUEUED:
                return False
            pipe.multi()
            pipe.hset(key, mapping=_encode({"status": JobStatus.RUNNING, "started_at": now(), "progress": 0.0}))
            pipe.set(self.keys.job_lease(job_id), "1", ex=self.lease_seconds)
            try:
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def report_progress(self, job_id: str, stage: Stage, progress: float) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.job(job_id), mapping=_encode({"stage": stage, "progress": round(progress, 4)}))
            pipe.set(self.keys.job_lease(job_id), "1", ex=self.lease_seconds)
            pipe.execute()

    def renew_lease(self, job_id: str) -> None:
        self.redis.set(self.keys.job_lease(job_id), "1", ex=self.lease_seconds)

    def succeed(
        self,
        job_id: str,
        result_bytes: bytes,
        result_meta: dict[str, Any],
        report: dict[str, Any],
        debug_images: dict[str, bytes],
    ) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(self.keys.job_result(job_id), result_bytes, ex=self.ttl_seconds)
            for name, data in debug_images.items():
                pipe.set(self.keys.job_debug(job_id, name), data, ex=self.ttl_seconds)
            pipe.hset(
                self.keys.job(job_id),
                mapping=_encode(
                    {
                        "status": JobStatus.SUCCEEDED,
                        "progress": 1.0,
                        "finished_at": now(),
                        "result": result_meta,
                        "report": report,
                        "debug_images": sorted(debug_images),
                    }
                ),
            )
            pipe.expire(self.keys.job(job_id), self.ttl_seconds)
            pipe.delete(self.keys.job_lease(job_id))
            pipe.hincrby(self.keys.outcomes(), SUCCEEDED_OUTCOME)
            pipe.execute()

    def fail(self, job_id: str, code: ErrorCode, message: str, report: dict[str, Any] | None = None) -> None:
        fields: dict[str, Any] = {
            "status": JobStatus.FAILED,
            "finished_at": now(),
            "error": {"code": code, "message": message},
        }
        if report is not None:
            fields["report"] = report
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.job(job_id), mapping=_encode(fields))
            pipe.expire(self.keys.job(job_id), self.ttl_seconds)
            pipe.delete(self.keys.job_lease(job_id))
            pipe.hincrby(self.keys.outcomes(), failed_outcome(code))
            pipe.execute()

    def fail_if_worker_lost(self, record: JobRecord) -> JobRecord:
        """A running job without a live lease lost its worker (killed, crashed, machine gone): fail it.

        Runs on every read, so whichever API replica looks first settles it.
        """
        if record.status is not JobStatus.RUNNING or self.redis.exists(self.keys.job_lease(record.id)):
            return record
        self._fail_unless_moved_on(
            record.id,
            JobStatus.RUNNING,
            ErrorCode.WORKER_LOST,
            "The worker processing this photo stopped unexpectedly. Please submit the photo again.",
        )
        return self.get(record.id) or record

    def fail_dropped_from_queue(self, record: JobRecord) -> JobRecord:
        """Fail a job still `queued` whose queue entry is gone or ended (its caller checked the queue): no worker
        will ever take it, so waiting would be forever."""
        self._fail_unless_moved_on(
            record.id,
            JobStatus.QUEUED,
            ErrorCode.JOB_LOST,
            "The photo was dropped from the queue before a worker could edit it. Please submit it again.",
        )
        return self.get(record.id) or record

    def _fail_unless_moved_on(self, job_id: str, expected: JobStatus, code: ErrorCode, message: str) -> None:
        """Fail the job if it is still `expected` and holds no lease. WATCH makes it safe against a worker that
        moves the job on meanwhile and against other API replicas doing the same."""
        key, lease = self.keys.job(job_id), self.keys.job_lease(job_id)
        with self.redis.pipeline() as pipe:
            pipe.watch(key, lease)
            status = pipe.hget(key, "status")
            if status is None or json.loads(status) != expected or pipe.exists(lease):
                return
            pipe.multi()
            pipe.hset(
                key,
                mapping=_encode(
                    {"status": JobStatus.FAILED, "finished_at": now(), "error": {"code": code, "message": message}}
                ),
            )
            pipe.hincrby(self.keys.outcomes(), failed_outcome(code))
            try:
                pipe.execute()
            except redis.WatchError:
                pass

    def worker_heartbeats(self) -> list[dict[str, Any]]:
        """What each live worker last published (name, device, missing models); expired ones are gone."""
        keys = list(self.redis.scan_iter(match=self.keys.workers_pattern(), count=500))
        return [json.loads(beat) for beat in self.redis.mget(keys) if beat] if keys else []

    def delete(self, job_id: str, debug_names: list[str]) -> None:
        self.redis.delete(
            self.keys.job(job_id),
            self.keys.job_input(job_id),
            self.keys.job_code(job_id),
            self.keys.job_result(job_id),
            self.keys.job_lease(job_id),
            *(self.keys.job_debug(job_id, name) for name in debug_names),
        )
