"""Fixtures shared by the service tests: a real Redis, an isolated namespace, a running API."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue

from chinfix.embedded_redis import EmbeddedRedis
from chinfix.jobs import redis_answers
from tests.service_harness import REPO_ROOT, start_api


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when one answers (CHINFIX_TEST_REDIS_URL or 127.0.0.1:6379), else a private one."""
    url = os.environ.get("CHINFIX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield embedded.start()
    embedded.stop()


@pytest.fixture
def isolated_env(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for one test's processes: its own key prefix and queue, so tests never see each other's jobs.
    Its keys are removed afterwards: the machine's Redis outlives the test run."""
    namespace = f"test-{secrets.token_hex(4)}"
    yield {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "CHINFIX_REDIS_URL": redis_url,
        "CHINFIX_KEY_PREFIX": namespace,
        "CHINFIX_QUEUE_NAME": namespace,
        "CHINFIX_MODEL_DIR": str(tmp_path / "models"),
        "CHINFIX_DEVICE": "cpu",
    }
    remove_namespace(redis.Redis.from_url(redis_url), namespace)


def remove_namespace(connection: redis.Redis, namespace: str) -> None:
    """Delete chinfix's keys under `namespace` and RQ's keys of the queue of that name, with the jobs it held."""
    queue = Queue(namespace, connection=connection)
    job_ids = set(queue.job_ids)
    for registry in (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry):
        job_ids.update(registry.get_job_ids())
    keys = [*connection.scan_iter(match=f"{namespace}:*"), *connection.scan_iter(match=f"rq:*:{namespace}")]
    keys += [f"rq:job:{job_id}" for job_id in job_ids] + [f"rq:results:{job_id}" for job_id in job_ids]
    if keys:
        connection.delete(*keys)
    connection.srem("rq:queues", queue.key)


@pytest.fixture
def api_server(isolated_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    api, base_url = start_api(isolated_env, tmp_path)
    yield base_url
    api.stop()
