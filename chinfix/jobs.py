"""The job record in Redis: written by the API (create, delete) and the worker (progress, outcome).

A record is one hash; the input, the result and debug images are separate binary keys. Every key of a job
carries the same TTL, so an expired job disappears whole.

Every change of a job's state is one Lua script that checks the state it expects and changes it in the same
step (Redis runs a script atomically). So a job deleted while a worker takes it stays deleted: the worker's
later writes find no record and change nothing, and never leave half a record behind.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
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


def redis_answers(url: str) -> bool:
    """True when a Redis at `url` answers a ping within a second."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


SUCCEEDED_OUTCOME = JobStatus.SUCCEEDED.value


def failed_outcome(code: ErrorCode) -> str:
    """The field of the outcomes hash that counts jobs failed with `code`."""
    return f"{JobStatus.FAILED}:{code}"


def read_outcomes(connection: redis.Redis, keys: RedisKeys) -> dict[tuple[JobStatus, str], int]:
    """Jobs ended so far, by (status, error code); the code is "" for succeeded jobs."""
    counts = {}
    for field_name, count in connection.hgetall(keys.outcomes()).items():
        status, _, code = field_name.decode().partition(":")
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
    owner: str | None = None
    """Hash of the id of the tenant that created the job (never its key)."""

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
            owner=values.get("owner"),
        )


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in fields.items()}


def _flatten(fields: dict[str, Any]) -> list[str]:
    return [item for pair in _encode(fields).items() for item in pair]


# KEYS: job, lease, running set. ARGV: queued status, lease seconds, job id, now, then field/value pairs.
_MARK_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return 1
"""

# KEYS: job, lease. ARGV: running status, lease seconds, then field/value pairs (none: renew the lease only).
_WHILE_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return 1
"""

# KEYS: job, lease, running set, outcomes, then one key per blob to store.
# ARGV: expected status, '1' when a live lease forbids the change, TTL, outcome field, job id, tenant key prefix,
# number of field/value pairs, the pairs, then the blobs.
# The tenant's active set is named from the record's owner, so it is not in KEYS (chinfix needs one Redis, not a
# cluster, as RQ does).
_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local pairs_end = 7 + 2 * tonumber(ARGV[7])
redis.call('HSET', KEYS[1], unpack(ARGV, 8, pairs_end))
redis.call('EXPIRE', KEYS[1], ARGV[3])
for index = 5, #KEYS do
  redis.call('SET', KEYS[index], ARGV[pairs_end + index - 4], 'EX', ARGV[3])
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then redis.call('ZREM', ARGV[6] .. cjson.decode(owner) .. ':active', ARGV[5]) end
return 1
"""

# KEYS: job, input, result, lease, running set, RQ queue list, ready-made code.
# ARGV: owner (JSON), job id, debug key prefix, tenant key prefix, running status.
_DELETE = """
local record = redis.call('HMGET', KEYS[1], 'status', 'owner', 'debug_images')
if not record[1] or record[2] ~= ARGV[1] then return 'missing' end
if record[1] == ARGV[5] then return 'running' end
if record[3] then
  for _, name in ipairs(cjson.decode(record[3])) do redis.call('DEL', ARGV[3] .. name) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZREM', ARGV[4] .. cjson.decode(record[2]) .. ':active', ARGV[2])
redis.call('LREM', KEYS[6], 0, ARGV[2])
return 'deleted'
"""

# KEYS: the tenant's active set. ARGV: job id, now, oldest score still counted, cap.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[3])))
return 1
"""


class DeleteOutcome(StrEnum):
    DELETED = "deleted"
    MISSING = "missing"
    """No such job for this owner."""
    RUNNING = "running"


class JobStore:
    """All reads and writes of job data. Both sides use it, so the record layout lives here only."""

    def __init__(self, connection: redis.Redis, keys: RedisKeys, ttl_seconds: int, lease_seconds: int) -> None:
        self.redis = connection
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds
        self._mark_running = connection.register_script(_MARK_RUNNING)
        self._while_running = connection.register_script(_WHILE_RUNNING)
        self._finish = connection.register_script(_FINISH)
        self._delete = connection.register_script(_DELETE)
        self._reserve = connection.register_script(_RESERVE)

    @classmethod
    def from_settings(cls, settings: Settings, connection: redis.Redis) -> JobStore:
        return cls(connection, RedisKeys(settings.key_prefix), settings.job_ttl_seconds, settings.lease_seconds)

    @property
    def _tenant_prefix(self) -> str:
        return self.keys.tenant_active("").removesuffix(":active")

    def reserve_slot(self, owner: str, job_id: str, max_active: int) -> bool:
        """Count `job_id` among the owner's queued and running jobs, unless it already has `max_active`.

        Entries older than the job TTL are dropped first: a job that expired unfinished frees its slot.
        """
        current = now()
        reserved = self._reserve(
            keys=[self.keys.tenant_active(owner)], args=[job_id, current, current - self.ttl_seconds, max_active]
        )
        return bool(reserved)

    def release_slot(self, owner: str, job_id: str) -> None:
        self.redis.zrem(self.keys.tenant_active(owner), job_id)

    def create(
        self,
        job_id: str,
        input_bytes: bytes,
        options: EditOptions,
        owner: str,
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
            owner=owner,
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
                    {
                        "status": record.status,
                        "options": record.options,
                        "created_at": record.created_at,
                        "owner": owner,
                    }
                ),
            )
            pipe.expire(self.keys.job(job_id), self.ttl_seconds)
            pipe.execute()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None. A hash without `created_at` is a fragment a worker wrote after a delete before
        transitions were atomic: no job."""
        fields = self.redis.hgetall(self.keys.job(job_id))
        if b"created_at" not in fields:
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
        current = now()
        fields = _flatten({"status": JobStatus.RUNNING, "started_at": current, "progress": 0.0})
        started = self._mark_running(
            keys=[self.keys.job(job_id), self.keys.job_lease(job_id), self.keys.running()],
            args=[json.dumps(JobStatus.QUEUED), self.lease_seconds, job_id, current, *fields],
        )
        return bool(started)

    def report_progress(self, job_id: str, stage: Stage, progress: float) -> bool:
        """Record the stage and progress of a running job and renew its lease; False when it is no longer running."""
        return self._renew(job_id, {"stage": stage, "progress": round(progress, 4)})

    def renew_lease(self, job_id: str) -> bool:
        return self._renew(job_id, {})

    def _renew(self, job_id: str, fields: dict[str, Any]) -> bool:
        renewed = self._while_running(
            keys=[self.keys.job(job_id), self.keys.job_lease(job_id)],
            args=[json.dumps(JobStatus.RUNNING), self.lease_seconds, *_flatten(fields)],
        )
        return bool(renewed)

    def succeed(
        self,
        job_id: str,
        result_bytes: bytes,
        result_meta: dict[str, Any],
        report: dict[str, Any],
        debug_images: dict[str, bytes],
    ) -> bool:
        """Running → succeeded, with the result stored. False (nothing written) when the job is no longer running."""
        blobs = {self.keys.job_result(job_id): result_bytes}
        blobs.update({self.keys.job_debug(job_id, name): data for name, data in debug_images.items()})
        fields = {
            "status": JobStatus.SUCCEEDED,
            "progress": 1.0,
            "finished_at": now(),
            "result": result_meta,
            "report": report,
            "debug_images": sorted(debug_images),
        }
        return self._end(job_id, JobStatus.RUNNING, fields, SUCCEEDED_OUTCOME, blobs)

    def fail(self, job_id: str, code: ErrorCode, message: str, report: dict[str, Any] | None = None) -> bool:
        """Running → failed. False (nothing written) when the job is no longer running."""
        fields: dict[str, Any] = {
            "status": JobStatus.FAILED,
            "finished_at": now(),
            "error": {"code": code, "message": message},
        }
        if report is not None:
            fields["report"] = report
        return self._end(job_id, JobStatus.RUNNING, fields, failed_outcome(code))

    def _end(
        self,
        job_id: str,
        expected: JobStatus,
        fields: dict[str, Any],
        outcome: str,
        blobs: dict[str, bytes] | None = None,
        unless_leased: bool = False,
    ) -> bool:
        blobs = blobs or {}
        pairs = _flatten(fields)
        ended = self._finish(
            keys=[
                self.keys.job(job_id),
                self.keys.job_lease(job_id),
                self.keys.running(),
                self.keys.outcomes(),
                *blobs,
            ],
            args=[
                json.dumps(expected),
                "1" if unless_leased else "0",
                self.ttl_seconds,
                outcome,
                job_id,
                self._tenant_prefix,
                len(pairs) // 2,
                *pairs,
                *blobs.values(),
            ],
        )
        return bool(ended)

    def fail_if_worker_lost(self, record: JobRecord) -> JobRecord:
        """A running job without a live lease lost its worker (killed, crashed, machine gone): fail it.

        Runs on every read, so whichever API replica looks first settles it.
        """
        if record.status is not JobStatus.RUNNING or self.redis.exists(self.keys.job_lease(record.id)):
            return record
        self._fail_unless_leased(
            record.id,
            JobStatus.RUNNING,
            ErrorCode.WORKER_LOST,
            "The worker processing this photo stopped unexpectedly. Please submit the photo again.",
        )
        return self.get(record.id) or record

    def fail_dropped_from_queue(self, record: JobRecord) -> JobRecord:
        """Fail a job still `queued` whose queue entry is gone or ended (its caller checked the queue): no worker
        will ever take it, so waiting would be forever."""
        self._fail_unless_leased(
            record.id,
            JobStatus.QUEUED,
            ErrorCode.JOB_LOST,
            "The photo was dropped from the queue before a worker could edit it. Please submit it again.",
        )
        return self.get(record.id) or record

    def _fail_unless_leased(self, job_id: str, expected: JobStatus, code: ErrorCode, message: str) -> None:
        """Fail the job if it is still `expected` and holds no lease, checked in the same atomic step: a worker
        that moves the job on meanwhile, or another API replica doing the same, wins cleanly."""
        fields = {"status": JobStatus.FAILED, "finished_at": now(), "error": {"code": code, "message": message}}
        self._end(job_id, expected, fields, failed_outcome(code), unless_leased=True)

    def running_job_ids(self) -> list[str]:
        return [member.decode() for member in self.redis.zrange(self.keys.running(), 0, -1)]

    def settle_running(self) -> int:
        """Fail the running jobs whose worker is gone and count the rest: the `running` gauge."""
        still_running = 0
        for job_id in self.running_job_ids():
            record = self.get(job_id)
            if record is None:
                self.redis.zrem(self.keys.running(), job_id)
                continue
            still_running += self.fail_if_worker_lost(record).status is JobStatus.RUNNING
        return still_running

    def worker_heartbeats(self) -> list[dict[str, Any]]:
        """What each live worker last published (name, device, missing models); expired ones are gone."""
        keys = list(self.redis.scan_iter(match=self.keys.workers_pattern(), count=500))
        return [json.loads(beat) for beat in self.redis.mget(keys) if beat] if keys else []

    def delete(self, job_id: str, owner: str, queue_key: str) -> DeleteOutcome:
        """Delete a job that is not running, with all its data and its queue entry, if `owner` owns it."""
        outcome = self._delete(
            keys=[
                self.keys.job(job_id),
                self.keys.job_input(job_id),
                self.keys.job_result(job_id),
                self.keys.job_lease(job_id),
                self.keys.running(),
                queue_key,
                self.keys.job_code(job_id),
            ],
            args=[
                json.dumps(owner),
                job_id,
                self.keys.job_debug(job_id, ""),
                self._tenant_prefix,
                json.dumps(JobStatus.RUNNING),
            ],
        )
        return DeleteOutcome(outcome.decode())
