"""The Idempotency-Key header: a client that retries a submission (a timeout, a dropped connection) gets the job
its first try created, not a second job.

A key belongs to a tenant and lives as long as jobs do (CHINFIX_JOB_TTL_SECONDS). The same key on a different
request (another photo or other options) is a client bug, answered 422 idempotency_conflict.
"""

from __future__ import annotations

import hashlib
import json

from fastapi import Request

from app.errors import ApiError
from chinfix.contract import EditOptions, ErrorCode
from chinfix.jobs import JobStore

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def idempotency_key_of(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not all(" " <= character <= "~" for character in key):
        raise ApiError(
            422,
            ErrorCode.INVALID_OPTIONS,
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
        )
    return key


def request_digest(data: bytes, options: EditOptions, *extra: object) -> str:
    """SHA-256 over what makes two submissions the same request: the photo, the options as validated (so
    `strength=1` and `strength=1.0` agree) and the rest (callback URL, the job a variant starts from)."""
    digest = hashlib.sha256(data)
    digest.update(json.dumps([options.model_dump(mode="json", by_alias=True), *extra], sort_keys=True).encode())
    return digest.hexdigest()


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def claim_idempotency_key(store: JobStore, tenant: str, key: str, job_id: str, digest: str) -> str | None:
    """Record `key` as creating `job_id` and return None, or return the job an earlier request with that key
    created. SET NX makes two concurrent retries agree on one job."""
    redis_key = store.keys.idempotency(tenant, _key_digest(key))
    claim = json.dumps({"job_id": job_id, "digest": digest})
    if store.redis.set(redis_key, claim, nx=True, ex=store.ttl_seconds):
        return None
    earlier = store.redis.get(redis_key)
    if earlier is None:  # expired between the two calls: this request is the first again
        return claim_idempotency_key(store, tenant, key, job_id, digest)
    recorded = json.loads(earlier)
    if recorded["digest"] != digest:
        raise ApiError(
            422,
            ErrorCode.IDEMPOTENCY_CONFLICT,
            f"This {IDEMPOTENCY_HEADER} was used for a different request (job {recorded['job_id']}); "
            "use a new key for a new photo or new options.",
        )
    return recorded["job_id"]


def release_idempotency_key(store: JobStore, tenant: str, key: str) -> None:
    """Forget a claim whose job could not be created, so the client's retry creates it."""
    store.redis.delete(store.keys.idempotency(tenant, _key_digest(key)))
