"""Real API and worker processes for the service tests, and polling until they reach a state."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.seed_data import SEED_DATA

REPO_ROOT = Path(__file__).resolve().parents[1]
PORTRAITS = sorted((SEED_DATA / "portraits").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningProcess:
    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def start_api(env: dict[str, str], log_dir: Path) -> tuple[RunningProcess, str]:
    port = free_port()
    api = RunningProcess(
        [sys.executable, "-m", "chinfix.cli", "serve", "--port", str(port)], env, log_dir / "api.log"
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            raise RuntimeError(f"API exited:\n{api.output()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return api, base_url
        except httpx.HTTPError:
            time.sleep(0.1)
    api.stop()
    raise RuntimeError(f"API did not start:\n{api.output()}")


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> RunningProcess:
    return RunningProcess([sys.executable, "-m", "chinfix.cli", "worker"], env, log_dir / f"{name}.log")


@contextmanager
def api_and_worker(env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, RunningProcess]]:
    """A running API and one worker: (the API's base URL, the worker process); both stopped on exit."""
    api, base_url = start_api(env, log_dir)
    worker = start_worker(env, log_dir)
    try:
        yield base_url, worker
    finally:
        worker.stop()
        api.stop()


def wait_for_worker(base_url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{base_url}/readyz", headers=headers, timeout=5).json()
        if body["workers"]:
            return body
        time.sleep(0.2)
    raise AssertionError("no worker registered in time")


def wait_for_job(base_url: str, job_id: str, until: set[str], timeout: float = 120.0,
                 headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{base_url}/jobs/{job_id}", headers=headers, timeout=5).json()
        if body["status"] in until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {until}: last {body}")
