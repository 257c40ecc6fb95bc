"""API + worker as real processes on a real Redis: the job lifecycle end to end."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service_harness import PORTRAITS, api_and_worker, free_port, start_worker, wait_for_job, wait_for_worker


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def submit(base_url: str, photo: Path, **options: str) -> str:
    files = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
    response = httpx.post(f"{base_url}/edit", files=files, data=options, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_job_succeeds_through_a_worker(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, "CHINFIX_PIPELINE": "tests.stub_pipeline:darken_lower_third"}
    with api_and_worker(env, tmp_path) as (base_url, worker):
        job_id = submit(base_url, PORTRAITS[0], output="png", debug="true")
        job = wait_for_job(base_url, job_id, {"succeeded", "failed"})
        assert job["status"] == "succeeded", (job, worker.output())
        assert job["progress"] == 1.0 and job["stage"] == "compose"
        assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]
        assert job["report"]["pipeline"] == "stub" and job["report"]["total_ms"] > 0
        original = decode(PORTRAITS[0].read_bytes())
        assert job["result"]["width"] == original.shape[1] and job["result"]["height"] == original.shape[0]
        assert job["result"]["content_type"] == "image/png"

        result = httpx.get(job["result"]["url"])
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        edited = decode(result.content)
        assert edited.shape == original.shape
        lower = original.shape[0] * 2 // 3
        assert np.array_equal(edited[:lower], original[:lower])
        assert np.array_equal(edited[lower:], original[lower:] // 2)

        debug = httpx.get(job["links"]["debug"]["soft_mask"])
        assert debug.status_code == 200 and decode(debug.content).shape == original.shape

        metrics = httpx.get(f"{base_url}/metrics").text
        assert 'chinfix_jobs_finished_total{code="",status="succeeded"} 1.0' in metrics
        assert 'chinfix_workers{ready="false"} 1.0' in metrics  # the stub needs no models; the store is empty

        assert httpx.delete(f"{base_url}/jobs/{job_id}").status_code == 204
        assert httpx.get(f"{base_url}/jobs/{job_id}/result").status_code == 404


def test_without_models_the_job_fails_with_model_missing(isolated_env: dict[str, str], tmp_path: Path) -> None:
    with api_and_worker(isolated_env, tmp_path) as (base_url, worker):
        readiness = wait_for_worker(base_url)
        assert readiness["ready"] is False
        missing = readiness["workers"][0]["missing_models"]
        assert {"stylegan2_ffhq", "fine_boundary", "fine_intercept"} <= set(missing)
        assert any("chinfix models pull" in problem for problem in readiness["problems"])
        assert httpx.get(f"{base_url}/readyz").status_code == 503

        job_id = submit(base_url, PORTRAITS[1])
        job = wait_for_job(base_url, job_id, {"succeeded", "failed"})
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "model_missing"
        assert "chinfix models pull" in job["error"]["message"] and "stylegan2_ffhq" in job["error"]["message"]
        result = httpx.get(f"{base_url}/jobs/{job_id}/result")
        assert result.status_code == 409 and result.json()["error"]["code"] == "job_failed"
        metrics = httpx.get(f"{base_url}/metrics").text
        assert 'chinfix_jobs_finished_total{code="model_missing",status="failed"} 1.0' in metrics


def test_worker_killed_mid_job_fails_the_job_visibly(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, "CHINFIX_PIPELINE": "tests.stub_pipeline:hang_in_invert", "CHINFIX_LEASE_SECONDS": "3"}
    with api_and_worker(env, tmp_path) as (base_url, worker):
        job_id = submit(base_url, PORTRAITS[2])
        running = wait_for_job(base_url, job_id, {"running"})
        deadline = time.monotonic() + 60
        while running["stage"] != "invert" and time.monotonic() < deadline:
            running = httpx.get(f"{base_url}/jobs/{job_id}").json()
            time.sleep(0.1)
        assert running["stage"] == "invert"
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()

        job = wait_for_job(base_url, job_id, {"failed", "succeeded"}, timeout=20)
        assert job["status"] == "failed" and job["error"]["code"] == "worker_lost", job
        # A fresh worker must not pick the dead job up again: it stays failed.
        replacement = start_worker({**env, "CHINFIX_PIPELINE": "tests.stub_pipeline:darken_lower_third"}, tmp_path, "w2")
        try:
            wait_for_worker(base_url)
            time.sleep(2)
            assert httpx.get(f"{base_url}/jobs/{job_id}").json()["status"] == "failed"
        finally:
            replacement.stop()


def test_a_job_past_its_time_limit_fails_and_the_worker_goes_on(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, "CHINFIX_PIPELINE": "tests.stub_pipeline:hang_in_invert", "CHINFIX_JOB_TIMEOUT_SECONDS": "10"}
    with api_and_worker(env, tmp_path) as (base_url, worker):
        job_id = submit(base_url, PORTRAITS[4])
        job = wait_for_job(base_url, job_id, {"failed", "succeeded"}, timeout=60)
        assert job["status"] == "failed" and job["error"]["code"] == "job_timeout", job
        assert "10 s" in job["error"]["message"]
        assert worker.process.poll() is None, worker.output()
        assert len(httpx.get(f"{base_url}/readyz").json()["workers"]) == 1


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_runs_everything_and_stops_cleanly(
    isolated_env: dict[str, str], tmp_path: Path, stop_signal: signal.Signals
) -> None:
    env = {key: value for key, value in isolated_env.items() if key != "CHINFIX_REDIS_URL"}
    env["CHINFIX_STATE_DIR"] = str(tmp_path / "state")
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "chinfix.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        readiness = wait_for_worker_via(base_url, up)
        assert readiness["redis"] is True and len(readiness["workers"]) == 1
        job_id = submit(base_url, PORTRAITS[3])
        job = wait_for_job(base_url, job_id, {"succeeded", "failed"})
        assert job["error"]["code"] == "model_missing"
    finally:
        up.send_signal(stop_signal)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "OPEN" in output
    assert "(embedded)" in output
    assert not (tmp_path / "state" / "redis.sock").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/healthz", timeout=2)


def wait_for_worker_via(base_url: str, up: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.poll() is None, up.stdout.read()
        try:
            body = httpx.get(f"{base_url}/readyz", timeout=2).json()
            if body["workers"]:
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("`chinfix up` did not come up")
