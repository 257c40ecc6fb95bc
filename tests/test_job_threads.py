"""A worker process running several jobs at once (CHINFIX_WORKER_BATCH > 1): API and worker as real processes on a
real Redis, RQ as the queue."""

from __future__ import annotations

import io
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from chinfix.contract import EditOptions
from chinfix.settings import Settings
from tests.service_inputs import jpeg_bytes
from tests.service_harness import PORTRAITS, api_and_worker, start_worker, wait_for_job
from tests.test_pipeline_service import FEW_STEPS, input_rgb
from tests.test_service import submit
from tests.tiny_models import build_tiny_model_store
from worker.models.landmarks import load_dlib_landmarker
from worker.registry import ModelRegistry

pytestmark = pytest.mark.skipif(len(PORTRAITS) < 6, reason="the seed portraits are not beside the checkout")


def wait_until_running_in_invert(base_url: str, job_ids: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [httpx.get(f"{base_url}/jobs/{job_id}", timeout=5).json() for job_id in job_ids]
        if all(job["status"] == "running" and job["stage"] == "invert" for job in jobs):
            return
        time.sleep(0.1)
    raise AssertionError(f"the jobs were not all running at once: {jobs}")


def test_a_killed_worker_loses_every_job_it_was_running(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **isolated_env,
        "CHINFIX_PIPELINE": "tests.stub_pipeline:hang_in_invert",
        "CHINFIX_LEASE_SECONDS": "3",
        "CHINFIX_WORKER_BATCH": "2",
    }
    with api_and_worker(env, tmp_path) as (base_url, worker):
        job_ids = [submit(base_url, PORTRAITS[index]) for index in (1, 2)]
        wait_until_running_in_invert(base_url, job_ids)
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        for job_id in job_ids:
            job = wait_for_job(base_url, job_id, {"failed", "succeeded"}, timeout=20)
            assert job["status"] == "failed" and job["error"]["code"] == "worker_lost", job


def test_concurrent_real_jobs_each_get_their_result_alone(
    isolated_env: dict[str, str], api_server: str, tmp_path: Path
) -> None:
    """Two real edits through a worker running two at once: their inversions and their diffuse refinements run as
    batches of 2, each job's result equals the same photo's edit run alone in this process, and a photo without a face
    fails without failing the other."""
    store = build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]))
    env = {**isolated_env, **FEW_STEPS, "CHINFIX_WORKER_BATCH": "3", "CHINFIX_BATCH_WAIT_MS": "3000"}
    worker = start_worker(env, tmp_path)
    photos = [PORTRAITS[4], PORTRAITS[5]]
    faceless = tmp_path / "faceless.jpg"
    faceless.write_bytes(jpeg_bytes(np.full((256, 256, 3), 128, np.uint8)))
    try:
        job_ids = [submit(api_server, photo, refine="diffuse", output="png") for photo in [*photos, faceless]]
        jobs = [wait_for_job(api_server, job_id, {"succeeded", "failed"}) for job_id in job_ids]
    finally:
        worker.stop()
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded", "failed"], ([job.get("error") for job in jobs], worker.output())
    assert jobs[2]["error"]["code"] == "no_face"
    assert "BatchedInversion: a batch of 2" in worker.output()
    assert "BatchedDiffuse: a batch of 2" in worker.output()

    registry = ModelRegistry.load(
        Settings(model_dir=store.root, device="cpu", invert_steps=3, diffuse_steps=3, quality_policy="report")
    )
    for photo, job in zip(photos, jobs):
        alone = registry.edit_portrait(input_rgb(photo), EditOptions(refine="diffuse"), registry, lambda *_: None)
        inversion, inversion_alone = job["report"]["inversion"], alone.report["inversion"]
        assert inversion["final_loss"] == pytest.approx(inversion_alone["final_loss"], rel=1e-3)
        assert {**inversion, "final_loss": None} == {**inversion_alone, "final_loss": None}
        assert job["report"]["alpha"] == pytest.approx(alone.report["alpha"], rel=1e-3)
        # the refined neck, pasted back: within one level of the photo edited alone (batched convolutions round apart)
        result = np.asarray(Image.open(io.BytesIO(httpx.get(f"{api_server}/jobs/{job['id']}/result", timeout=30).content)))
        assert result.shape == alone.image.shape and np.abs(result.astype(int) - alone.image.astype(int)).max() <= 1
        assert not np.array_equal(result, input_rgb(photo))


def test_face_detection_from_concurrent_jobs_finds_what_it_finds_alone() -> None:
    landmarker = load_dlib_landmarker()
    photos = [input_rgb(PORTRAITS[index]) for index in (1, 4, 5)]
    alone = [landmarker.detect(photo) for photo in photos]
    for _ in range(3):
        with ThreadPoolExecutor(len(photos)) as pool:
            assert list(pool.map(landmarker.detect, photos)) == alone
