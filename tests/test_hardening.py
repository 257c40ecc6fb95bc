"""Issue 11: the faults an attacker, a fuzzer and a flaky network found, each reproduced against a real API
process and a real Redis (the worker's writes are made with the worker's own JobStore)."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from app.bench import png_bomb
from chinfix.contract import ErrorCode, RedisKeys, Stage
from chinfix.jobs import JobStore
from tests.service_harness import PORTRAITS, api_and_worker, start_api, wait_for_job
from tests.test_api import assert_error, post_edit


@pytest.fixture
def portrait_bytes() -> bytes:
    return PORTRAITS[0].read_bytes()


def worker_store(env: dict[str, str]) -> JobStore:
    """The JobStore a worker of this namespace writes through."""
    return JobStore(redis.Redis.from_url(env["CHINFIX_REDIS_URL"]), RedisKeys(env["CHINFIX_KEY_PREFIX"]), 600, 30)


# 1. submit-then-delete race


def test_a_deleted_job_stays_deleted_whatever_a_worker_writes_after(
    api_server: str, isolated_env: dict[str, str], portrait_bytes: bytes
) -> None:
    job_id = post_edit(api_server, portrait_bytes).json()["id"]
    assert httpx.delete(f"{api_server}/jobs/{job_id}").status_code == 204
    # What a worker that took the job just before the DELETE goes on to write.
    store = worker_store(isolated_env)
    assert not store.mark_running(job_id)
    store.report_progress(job_id, Stage.INVERT, 0.5)
    store.renew_lease(job_id)
    store.succeed(job_id, b"result", {"width": 1, "height": 1, "content_type": "image/png"}, {}, {"aligned": b"x"})
    store.fail(job_id, ErrorCode.INTERNAL_ERROR, "late failure")
    for method, path in [("GET", ""), ("GET", "/result"), ("GET", "/debug/aligned"), ("DELETE", "")]:
        response = httpx.request(method, f"{api_server}/jobs/{job_id}{path}")
        assert response.status_code == 404, (method, path, response.text)
    leftovers = list(store.redis.scan_iter(match=f"{isolated_env['CHINFIX_KEY_PREFIX']}:job:{job_id}*"))
    assert leftovers == []


def test_submit_then_delete_pairs_with_a_worker_never_answer_500(
    isolated_env: dict[str, str], tmp_path: Path, portrait_bytes: bytes
) -> None:
    env = {**isolated_env, "CHINFIX_PIPELINE": "tests.stub_pipeline:darken_lower_third"}
    deletes: Counter[int] = Counter()
    with api_and_worker(env, tmp_path) as (base_url, worker):
        kept = []
        for _ in range(30):
            job_id = post_edit(base_url, portrait_bytes, output="png").json()["id"]
            status = httpx.delete(f"{base_url}/jobs/{job_id}").status_code
            deletes[status] += 1
            if status == 409:
                kept.append(job_id)
            else:
                assert status == 204, worker.output()
                assert httpx.get(f"{base_url}/jobs/{job_id}").status_code == 404
        for job_id in kept:
            assert wait_for_job(base_url, job_id, {"succeeded", "failed"})["status"] == "succeeded"
        assert worker.process.poll() is None, worker.output()
    assert set(deletes) <= {204, 409}, deletes


# 3. decode-memory bombs (the API)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_the_api_checks_a_png_bomb_without_decoding_it(isolated_env: dict[str, str], tmp_path: Path) -> None:
    """A 114 KB PNG of 6245x6245 pixels (39 MP, under the limit) decodes to 117 MB; a full decode in the API cost
    600-750 MB of peak RSS. The bound here is generous: it separates decoding from not decoding, nothing finer."""
    api, base_url = start_api(isolated_env, tmp_path)
    try:
        bomb = png_bomb(6245)
        assert len(bomb) < 200_000
        httpx.get(f"{base_url}/healthz")
        before = peak_rss_mb(api.process.pid)
        response = post_edit(base_url, bomb, filename="bomb.png")
        assert response.status_code == 202, response.text
        assert peak_rss_mb(api.process.pid) - before < 150
    finally:
        api.stop()


# 4. /metrics cardinality


def test_junk_methods_and_paths_do_not_grow_the_metrics(api_server: str) -> None:
    for index in range(25):
        httpx.request(f"JUNK{index}", f"{api_server}/edit")
        httpx.get(f"{api_server}/no/such/path/{index}")
    metrics = httpx.get(f"{api_server}/metrics").text
    methods = set(re.findall(r'chinfix_http_requests_total\{method="([^"]*)"', metrics))
    routes = set(re.findall(r'chinfix_http_requests_total\{[^}]*route="([^"]*)"', metrics))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert "other" in methods
    assert not any("/no/such/path" in route for route in routes), routes


# 5. tenants, limits, readiness and metrics access

TENANT_KEYS = "alpha:alpha-key-1,alpha:alpha-key-2,beta:beta-key"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_job_belongs_to_its_tenant(isolated_env: dict[str, str], tmp_path: Path, portrait_bytes: bytes) -> None:
    api, base_url = start_api({**isolated_env, "CHINFIX_API_KEYS": TENANT_KEYS}, tmp_path)
    try:
        accepted = post_edit(base_url, portrait_bytes, headers=bearer("alpha-key-1"))
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        assert httpx.get(f"{base_url}/jobs/{job_id}", headers=bearer("alpha-key-2")).status_code == 200  # rotation
        for method, path in [("GET", ""), ("GET", "/result"), ("GET", "/debug/aligned"), ("DELETE", "")]:
            response = httpx.request(method, f"{base_url}/jobs/{job_id}{path}", headers=bearer("beta-key"))
            assert_error(response, 404, "job_not_found")
        assert httpx.get(f"{base_url}/jobs/{job_id}", headers=bearer("alpha-key-1")).json()["status"] == "queued"

        record = worker_store(isolated_env).redis.hgetall(f"{isolated_env['CHINFIX_KEY_PREFIX']}:job:{job_id}")
        stored = b" ".join(record.values())
        assert b"owner" in record and b"alpha" not in stored and b"key" not in stored
        assert httpx.delete(f"{base_url}/jobs/{job_id}", headers=bearer("alpha-key-2")).status_code == 204
    finally:
        api.stop()


def test_rate_limit_per_tenant(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, "CHINFIX_API_KEYS": TENANT_KEYS, "CHINFIX_RATE_LIMIT": "0.2", "CHINFIX_RATE_BURST": "3"}
    api, base_url = start_api(env, tmp_path)
    try:
        unknown_job = f"{base_url}/jobs/{'0' * 32}"
        statuses = [httpx.get(unknown_job, headers=bearer("alpha-key-1")).status_code for _ in range(3)]
        assert statuses == [404, 404, 404]
        limited = httpx.get(unknown_job, headers=bearer("alpha-key-2"))
        assert_error(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 5
        assert httpx.get(unknown_job, headers=bearer("beta-key")).status_code == 404
    finally:
        api.stop()


def test_quota_of_queued_and_running_jobs_per_tenant(
    isolated_env: dict[str, str], tmp_path: Path, portrait_bytes: bytes
) -> None:
    env = {**isolated_env, "CHINFIX_API_KEYS": TENANT_KEYS, "CHINFIX_TENANT_MAX_ACTIVE_JOBS": "2"}
    api, base_url = start_api(env, tmp_path)
    try:
        first, _ = (post_edit(base_url, portrait_bytes, headers=bearer("alpha-key-1")) for _ in range(2))
        refused = post_edit(base_url, portrait_bytes, headers=bearer("alpha-key-2"))
        assert_error(refused, 429, "quota_exceeded")
        assert int(refused.headers["retry-after"]) > 0
        assert post_edit(base_url, portrait_bytes, headers=bearer("beta-key")).status_code == 202
        job_url = f"{base_url}/jobs/{first.json()['id']}"
        assert httpx.delete(job_url, headers=bearer("alpha-key-1")).status_code == 204
        assert post_edit(base_url, portrait_bytes, headers=bearer("alpha-key-1")).status_code == 202
    finally:
        api.stop()


def test_readiness_details_and_metrics_need_the_operator_key(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, "CHINFIX_API_KEYS": TENANT_KEYS, "CHINFIX_METRICS_KEY": "operator-key"}
    api, base_url = start_api(env, tmp_path)
    try:
        for headers in (None, bearer("alpha-key-1")):
            readiness = httpx.get(f"{base_url}/readyz", headers=headers)
            assert readiness.status_code == 503 and readiness.json() == {"ready": False}
        detailed = httpx.get(f"{base_url}/readyz", headers=bearer("operator-key")).json()
        assert detailed["ready"] is False and detailed["redis"] is True and detailed["workers"] == []
        for headers in (None, bearer("alpha-key-1")):
            assert_error(httpx.get(f"{base_url}/metrics", headers=headers), 401, "unauthorized")
        assert "chinfix_redis_up 1.0" in httpx.get(f"{base_url}/metrics", headers=bearer("operator-key")).text
    finally:
        api.stop()


# 7. ids that name other keys


def test_ids_are_checked_before_redis(api_server: str, portrait_bytes: bytes) -> None:
    job_id = post_edit(api_server, portrait_bytes).json()["id"]
    for bad in (f"{job_id}:input", f"{job_id}:lease", job_id.upper(), job_id[:-1], "*", f"{job_id}0"):
        for method, path in [("GET", ""), ("GET", "/result"), ("DELETE", "")]:
            assert_error(httpx.request(method, f"{api_server}/jobs/{bad}{path}"), 404, "job_not_found")
    assert httpx.get(f"{api_server}/jobs/{job_id}").json()["status"] == "queued"


# 9. the smaller ones


@pytest.mark.parametrize(
    "files",
    [
        [("image", ("a.jpg", b"x", "image/jpeg")), ("image", ("b.jpg", b"y", "image/jpeg"))],
        [("image", ("a.jpg", b"x", "image/jpeg")), ("strength", ("s.txt", b"1", "text/plain"))],
        [("image", ("a.jpg", b"x", "image/jpeg"))] + [(f"field{index}", (None, "1")) for index in range(30)],
    ],
    ids=["two-images", "option-as-file", "too-many-fields"],
)
def test_multipart_errors_are_invalid_options(api_server: str, files: list) -> None:
    assert_error(httpx.post(f"{api_server}/edit", files=files), 422, "invalid_options")


def test_return_kind_is_not_an_alias(api_server: str, portrait_bytes: bytes) -> None:
    response = post_edit(api_server, portrait_bytes, return_kind="aligned")
    assert_error(response, 422, "invalid_options")
    assert "return_kind" in response.json()["error"]["message"]


def test_error_messages_carry_no_python_reprs(api_server: str) -> None:
    for upload in (b"\xff\xd8\xff" + b"junk" * 50, b"\x89PNG\r\n\x1a\n" + b"junk" * 50, b"RIFF\0\0\0\0WEBPjunk"):
        response = post_edit(api_server, upload)
        assert response.status_code in (413, 415, 422), response.text
        message = response.json()["error"]["message"]
        assert "object at" not in message and "0x" not in message and "<" not in message, message


def test_links_do_not_trust_an_unknown_host(api_server: str, portrait_bytes: bytes) -> None:
    files = {"image": ("photo.jpg", portrait_bytes, "image/jpeg")}
    accepted = httpx.post(f"{api_server}/edit", files=files, headers={"Host": "evil.example"}, timeout=60)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert accepted.headers["location"] == f"/jobs/{job_id}"
    assert accepted.json()["links"]["self"] == f"/jobs/{job_id}"
    view = httpx.get(f"{api_server}/jobs/{job_id}", headers={"Host": "evil.example:8000"}).json()
    assert "evil" not in str(view["links"])
    trusted = httpx.get(f"{api_server}/jobs/{job_id}").json()
    assert trusted["links"]["self"] == f"{api_server}/jobs/{job_id}"


def test_docs_work_offline(api_server: str) -> None:
    page = httpx.get(f"{api_server}/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page.text)
    assert assets and not any(asset.startswith("http") for asset in assets), assets
    for asset in assets:
        assert httpx.get(f"{api_server}{asset}").status_code == 200, asset


def test_readme_download_fails_on_http_errors() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    download = [line for line in readme.splitlines() if "curl" in line and "/result" in line]
    assert download and all("--fail-with-body" in line for line in download), download


def test_running_gauge_drops_after_worker_lost(isolated_env: dict[str, str], tmp_path: Path) -> None:
    import signal

    env = {**isolated_env, "CHINFIX_PIPELINE": "tests.stub_pipeline:hang_in_invert", "CHINFIX_LEASE_SECONDS": "3"}
    with api_and_worker(env, tmp_path) as (base_url, worker):
        job_id = post_edit(base_url, PORTRAITS[2].read_bytes()).json()["id"]
        wait_for_job(base_url, job_id, {"running"})
        assert "chinfix_jobs_running 1.0" in httpx.get(f"{base_url}/metrics").text
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        deadline = time.monotonic() + 20
        while "chinfix_jobs_running 0.0" not in (metrics := httpx.get(f"{base_url}/metrics").text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.5)
        assert httpx.get(f"{base_url}/jobs/{job_id}").json()["error"]["code"] == "worker_lost"
        assert 'chinfix_jobs_finished_total{code="worker_lost",status="failed"} 1.0' in metrics
