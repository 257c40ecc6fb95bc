"""Fixtures shared by the service tests: a real Redis, an isolated namespace, a running API."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chinfix.embedded_redis import EmbeddedRedis
from tests.service_harness import REPO_ROOT, start_api


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when one answers (CHINFIX_TEST_REDIS_URL or 127.0.0.1:6379), else a private one."""
    url = os.environ.get("CHINFIX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.RedisError:
        pass
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield embedded.start()
    embedded.stop()


@pytest.fixture
def isolated_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for one test's processes: its own key prefix and queue, so tests never see each other's jobs."""
    namespace = f"test-{secrets.token_hex(4)}"
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "CHINFIX_REDIS_URL": redis_url,
        "CHINFIX_KEY_PREFIX": namespace,
        "CHINFIX_QUEUE_NAME": namespace,
        "CHINFIX_MODEL_DIR": str(tmp_path / "models"),
        "CHINFIX_DEVICE": "cpu",
    }


@pytest.fixture
def api_server(isolated_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    api, base_url = start_api(isolated_env, tmp_path)
    yield base_url
    api.stop()
