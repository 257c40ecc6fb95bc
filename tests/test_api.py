"""The HTTP API against a real uvicorn process and a real Redis: validation, errors, job handling, access."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service_harness import PORTRAITS, free_port, start_api
from tests.service_inputs import jpeg_bytes, png_bytes, png_claiming_size


def post_edit(base_url: str, data: bytes, filename: str = "photo.jpg", headers=None, **options) -> httpx.Response:
    files = {"image": (filename, data, "image/jpeg")}
    return httpx.post(f"{base_url}/edit", files=files, data=options, headers=headers, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) > 10


@pytest.fixture
def portrait_bytes() -> bytes:
    return PORTRAITS[0].read_bytes()


def test_health_and_docs(api_server: str) -> None:
    assert httpx.get(f"{api_server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api_server}/docs").status_code == 200
    spec = httpx.get(f"{api_server}/openapi.json").json()
    edit_body = spec["paths"]["/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "strength", "refine", "face", "output", "quality", "return"} <= set(edit_body["properties"])


def test_readyz_without_worker_is_not_ready(api_server: str) -> None:
    response = httpx.get(f"{api_server}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["redis"] is True and body["ready"] is False and body["workers"] == []
    assert any("chinfix worker" in problem for problem in body["problems"])


def test_accepted_job_shape(api_server: str, portrait_bytes: bytes) -> None:
    response = post_edit(api_server, portrait_bytes, strength="0.5", refine="warp", face="0", output="png")
    assert response.status_code == 202, response.text
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["status"] == "queued"
    assert response.headers["location"] == body["links"]["self"] == f"{api_server}/jobs/{body['id']}"
    job = httpx.get(body["links"]["self"]).json()
    assert job["status"] == "queued" and job["stage"] is None and job["progress"] == 0
    assert job["options"] == {
        "strength": 0.5, "refine": "warp", "face": 0, "output": "png", "quality": 95, "return": "photo", "debug": False,
        "strip_metadata": False,
    }
    assert job["error"] is None and job["result"] is None and job["created_at"]
    second = post_edit(api_server, portrait_bytes).json()
    assert second["id"] != body["id"]


def test_result_before_finish_is_409_and_delete_cancels(api_server: str, portrait_bytes: bytes) -> None:
    job_id = post_edit(api_server, portrait_bytes).json()["id"]
    assert_error(httpx.get(f"{api_server}/jobs/{job_id}/result"), 409, "job_not_finished")
    assert httpx.delete(f"{api_server}/jobs/{job_id}").status_code == 204
    assert_error(httpx.get(f"{api_server}/jobs/{job_id}"), 404, "job_not_found")
    assert_error(httpx.delete(f"{api_server}/jobs/{job_id}"), 404, "job_not_found")


def test_unknown_job_and_route(api_server: str) -> None:
    assert_error(httpx.get(f"{api_server}/jobs/{'0' * 32}"), 404, "job_not_found")
    assert_error(httpx.get(f"{api_server}/jobs/{'0' * 32}/result"), 404, "job_not_found")
    assert_error(httpx.get(f"{api_server}/no/such/route"), 404, "not_found")
    assert_error(httpx.put(f"{api_server}/edit"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("make_upload", "status", "code"),
    [
        (lambda portrait: b"", 400, "empty_upload"),
        (lambda portrait: b"hello, I am a text file\n" * 10, 415, "unsupported_format"),
        (lambda portrait: jpeg_bytes(np.full((300, 300, 3), 90, np.uint8))[:700], 422, "image_unreadable"),
        (lambda portrait: png_bytes(np.zeros((1, 1, 3), np.uint8)), 422, "image_too_small"),
        (lambda portrait: png_claiming_size(100_000, 100_000), 413, "image_too_large"),
        (lambda portrait: portrait + b"\0" * 30_000_000, 413, "upload_too_large"),
    ],
    ids=["empty", "text-named-jpg", "truncated-jpeg", "1x1-png", "bomb-header", "30MB"],
)
def test_bad_uploads(api_server: str, portrait_bytes: bytes, make_upload, status: int, code: str) -> None:
    assert_error(post_edit(api_server, make_upload(portrait_bytes)), status, code)


@pytest.mark.parametrize(
    "options",
    [
        {"strength": "1.5"},
        {"strength": "strong"},
        {"refine": "magic"},
        {"face": "-1"},
        {"face": "biggest"},
        {"output": "gif"},
        {"quality": "0"},
        {"return": "everything"},
        {"colour": "blue"},
    ],
)
def test_bad_options(api_server: str, portrait_bytes: bytes, options: dict[str, str]) -> None:
    response = post_edit(api_server, portrait_bytes, **options)
    assert_error(response, 422, "invalid_options")
    assert next(iter(options)) in response.json()["error"]["message"]


def test_missing_image_field(api_server: str) -> None:
    response = httpx.post(f"{api_server}/edit", data={"strength": "1"})
    assert_error(response, 422, "invalid_options")


def test_api_keys(isolated_env: dict[str, str], tmp_path: Path, portrait_bytes: bytes) -> None:
    api, base_url = start_api({**isolated_env, "CHINFIX_API_KEYS": "first-key, second-key"}, tmp_path)
    try:
        assert httpx.get(f"{base_url}/healthz").status_code == 200
        assert httpx.get(f"{base_url}/readyz").status_code == 503
        assert_error(post_edit(base_url, portrait_bytes), 401, "unauthorized")
        assert_error(post_edit(base_url, portrait_bytes, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_error(httpx.get(f"{base_url}/jobs/{'0' * 32}"), 401, "unauthorized")
        accepted = post_edit(base_url, portrait_bytes, headers={"Authorization": "Bearer second-key"})
        assert accepted.status_code == 202
        job_url = accepted.json()["links"]["self"]
        assert httpx.get(job_url, headers={"Authorization": "Bearer first-key"}).status_code == 200
        assert_error(httpx.get(job_url, headers={"Authorization": "Basic first-key"}), 401, "unauthorized")
    finally:
        api.stop()


def test_metrics_count_requests_and_read_the_queue(api_server: str, portrait_bytes: bytes) -> None:
    def metric_lines() -> list[str]:
        response = httpx.get(f"{api_server}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return response.text.splitlines()

    before = metric_lines()
    assert "chinfix_redis_up 1.0" in before and "chinfix_jobs_queued 0.0" in before
    for _ in range(2):
        assert post_edit(api_server, portrait_bytes).status_code == 202
    assert_error(post_edit(api_server, b""), 400, "empty_upload")
    after = metric_lines()
    assert "chinfix_jobs_queued 2.0" in after
    assert 'chinfix_http_requests_total{method="POST",route="/edit",status="202"} 2.0' in after
    assert 'chinfix_http_requests_total{method="POST",route="/edit",status="400"} 1.0' in after
    assert any(line.startswith('chinfix_http_request_seconds_count{method="POST",route="/edit"} 3.0') for line in after)


def test_a_full_queue_pushes_back(isolated_env: dict[str, str], tmp_path: Path, portrait_bytes: bytes) -> None:
    api, base_url = start_api({**isolated_env, "CHINFIX_MAX_QUEUED_JOBS": "2"}, tmp_path)
    try:
        for _ in range(2):
            assert post_edit(base_url, portrait_bytes).status_code == 202
        refused = post_edit(base_url, portrait_bytes)
        assert_error(refused, 503, "queue_full")
        assert refused.headers["retry-after"] == "60"
    finally:
        api.stop()


def test_unreachable_redis_is_503_not_500(isolated_env: dict[str, str], tmp_path: Path, portrait_bytes: bytes) -> None:
    closed_port = free_port()
    api, base_url = start_api({**isolated_env, "CHINFIX_REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"}, tmp_path)
    try:
        assert httpx.get(f"{base_url}/healthz").status_code == 200
        readiness = httpx.get(f"{base_url}/readyz")
        assert readiness.status_code == 503 and readiness.json()["redis"] is False
        refused = post_edit(base_url, portrait_bytes)
        assert_error(refused, 503, "service_unavailable")
        assert refused.headers["retry-after"] == "5"
        assert_error(httpx.get(f"{base_url}/jobs/{'0' * 32}"), 503, "service_unavailable")
        assert "chinfix_redis_up 0.0" in httpx.get(f"{base_url}/metrics").text
    finally:
        api.stop()


def test_a_queued_job_whose_queue_entry_vanished_fails_visibly(
    api_server: str, isolated_env: dict[str, str], portrait_bytes: bytes
) -> None:
    from redis import Redis
    from rq.job import Job

    job_id = post_edit(api_server, portrait_bytes).json()["id"]
    assert httpx.get(f"{api_server}/jobs/{job_id}").json()["status"] == "queued"
    # What Redis's eviction, or RQ's clean-up after a worker died holding the job, leaves behind.
    Job.fetch(job_id, connection=Redis.from_url(isolated_env["CHINFIX_REDIS_URL"])).delete()
    job = httpx.get(f"{api_server}/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "job_lost", job
    assert_error(httpx.get(f"{api_server}/jobs/{job_id}/result"), 409, "job_failed")
