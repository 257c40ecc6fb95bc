"""Signed webhooks to a real HTTP receiver, Idempotency-Key, and variants, through the real API and workers."""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import trustme

from app.callbacks import post_signed
from chinfix.callbacks import retry_delays, signature_header
from chinfix.settings import Settings
from tests.conftest import remove_namespace
from tests.service_harness import PORTRAITS, RunningProcess, api_and_worker, start_api, start_worker, wait_for_job
from tests.service_inputs import jpeg_bytes
from tests.photo_files import smooth_rgb
from tests.test_pipeline_service import FEW_STEPS
from tests.tiny_models import build_tiny_model_store

SECRET = "whsec-test-0123456789"
STUB = {"CHINFIX_PIPELINE": "tests.stub_pipeline:darken_neck_box"}


def verify_signature(header: str, body: bytes, secret: str, tolerance_s: int = 300) -> bool:
    """What a receiver runs (the README's snippet): recompute the HMAC of "<t>.<body>", compare in constant
    time, refuse old timestamps."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - timestamp) <= tolerance_s


class Receiver:
    """A loopback HTTP server (HTTPS with `tls`) that answers the given statuses in turn and records what it
    received, and the TLS server names (SNI) its clients asked for."""

    def __init__(self, statuses: list[int], tls: ssl.SSLContext | None = None) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.server_names: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = receiver.statuses[min(len(receiver.received), len(receiver.statuses)) - 1]
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda connection, name, context: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/chinfix"

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, f"{len(self.received)} deliveries, expected {count}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_env(isolated_env: dict[str, str], redis_url: str) -> Iterator[dict[str, str]]:
    env = {
        **isolated_env,
        **STUB,
        "CHINFIX_WEBHOOK_SECRETS": f"anonymous:{SECRET}",
        "CHINFIX_CALLBACK_ALLOW": "127.0.0.1",
        "CHINFIX_CALLBACK_RETRY_BASE_SECONDS": "1",
        "CHINFIX_CALLBACK_RETRY_WINDOW_SECONDS": "2",
    }
    yield env
    remove_namespace(redis.Redis.from_url(redis_url), f"{isolated_env['CHINFIX_QUEUE_NAME']}-callbacks")


def submit(base_url: str, data: bytes, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    return httpx.post(f"{base_url}/edit", files={"image": ("photo.jpg", data)}, data=fields, headers=headers, timeout=30)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_retry_delays_double_within_the_window() -> None:
    assert retry_delays(15, 3600) == [15, 30, 60, 120, 240, 480, 900, 900]
    assert sum(retry_delays(15, 3600)) <= 3600 < sum(retry_delays(15, 3600)) + 900
    assert retry_delays(1, 2) == [1]


def test_a_webhook_fails_then_is_retried_and_signed(webhook_env: dict[str, str], tmp_path: Path) -> None:
    receiver = Receiver([500, 200])
    deliverer = RunningProcess([sys.executable, "-m", "chinfix.cli", "callbacks"], webhook_env, tmp_path / "callbacks.log")
    try:
        with api_and_worker(webhook_env, tmp_path) as (base_url, worker):
            response = submit(base_url, jpeg_bytes(smooth_rgb(120, 160)), callback_url=receiver.url)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            receiver.wait_for(2)
            for headers, body in receiver.received:
                assert headers["Chinfix-Job-Id"] == job_id
                assert verify_signature(headers["Chinfix-Signature"], body, SECRET)
                assert not verify_signature(headers["Chinfix-Signature"], body, "another-secret")
                view = json.loads(body)
                assert view["id"] == job_id and view["status"] == "succeeded"
                assert view["links"]["result"].startswith(base_url)
            first, second = (json.loads(body) for _, body in receiver.received)
            assert first["callback"] is None and second["callback"]["last_status"] == 500
            deadline = time.monotonic() + 10
            while (callback := httpx.get(f"{base_url}/jobs/{job_id}").json()["callback"])["attempts"] < 2:
                assert time.monotonic() < deadline, callback
                time.sleep(0.1)
            assert callback["last_status"] == 200 and callback["delivered_at"] is not None, callback
            time.sleep(1.5)
            assert len(receiver.received) == 2, "a delivered webhook is not sent again"
    finally:
        deliverer.stop()
        receiver.close()
    assert "Traceback" not in deliverer.output()


def test_a_webhook_that_keeps_failing_stops_after_the_window(webhook_env: dict[str, str], tmp_path: Path) -> None:
    receiver = Receiver([503])
    deliverer = RunningProcess([sys.executable, "-m", "chinfix.cli", "callbacks"], webhook_env, tmp_path / "callbacks.log")
    try:
        with api_and_worker(webhook_env, tmp_path) as (base_url, _):
            job_id = submit(base_url, jpeg_bytes(smooth_rgb(120, 160)), callback_url=receiver.url).json()["id"]
            receiver.wait_for(2)
            time.sleep(2.5)
            assert len(receiver.received) == 2, "window 2 s, base 1 s: one retry only"
            callback = httpx.get(f"{base_url}/jobs/{job_id}").json()["callback"]
            assert callback["attempts"] == 2 and callback["last_status"] == 503 and callback["delivered_at"] is None
    finally:
        deliverer.stop()
        receiver.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",  # plain http to a host not allowed
        "https://10.1.2.3/hook",  # private
        "https://169.254.169.254/latest/meta-data",  # link-local: the cloud metadata service
        "https://[::1]/hook",  # loopback
        "ftp://example.com/hook",
    ],
)
def test_callback_urls_into_private_networks_are_refused(webhook_env: dict[str, str], tmp_path: Path, url: str) -> None:
    api, base_url = start_api(webhook_env, tmp_path)
    try:
        response = submit(base_url, jpeg_bytes(smooth_rgb(120, 160)), callback_url=url)
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_callback_url", response.text
    finally:
        api.stop()


class ChangingResolver:
    """`socket.getaddrinfo` whose answers for `name` change: `answers` in turn, then the last one for good, as a
    DNS server under an attacker's control serves them; other hosts resolve as usual."""

    def __init__(self, name: str, answers: list[str]) -> None:
        self.name = name
        self.answers = answers
        self.calls = 0
        self.resolve = socket.getaddrinfo

    def __call__(self, host: str, port: object, *args: object, **kwargs: object) -> list:
        if host != self.name:
            return self.resolve(host, port, *args, **kwargs)
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return self.resolve(answer, port, *args, **kwargs)


@pytest.fixture
def test_authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A certificate authority that this process's default TLS contexts trust (SSL_CERT_FILE)."""
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "authority.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "authority.pem"))
    return authority


def https_receiver(authority: trustme.CA, certified_name: str) -> Receiver:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(certified_name).configure_cert(context)
    return Receiver([200], tls=context)


def test_a_delivery_connects_to_the_address_it_checked(
    test_authority: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to a public address for the check, then to loopback. The POST must go to
    the public address that was checked (here it cannot complete), never to the receiver on loopback."""
    name, public_address = "hooks.rebinding.test", "192.88.99.1"
    assert ipaddress.ip_address(public_address).is_global
    receiver = https_receiver(test_authority, name)
    resolver = ChangingResolver(name, [public_address, "127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    try:
        status, error = post_signed(
            f"https://{name}:{receiver.port}/hook", b"{}", "0" * 32, SECRET, Settings(callback_timeout_seconds=2)
        )
    finally:
        receiver.close()
    assert (receiver.received, receiver.server_names) == ([], []), "the receiver behind the second answer was reached"
    assert status is None and error, (status, error)
    assert resolver.calls == 1


def test_a_pinned_delivery_keeps_the_host_name_for_tls_and_host(
    test_authority: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "hooks.pinned.test"
    settings = Settings(callback_allow=(name,), callback_timeout_seconds=5)
    resolver = ChangingResolver(name, ["127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    receiver, impostor = https_receiver(test_authority, name), https_receiver(test_authority, "another.test")
    try:
        assert post_signed(f"https://{name}:{receiver.port}/hook?x=1", b"{}", "0" * 32, SECRET, settings) == (200, None)
        status, error = post_signed(f"https://{name}:{impostor.port}/hook", b"{}", "0" * 32, SECRET, settings)
    finally:
        receiver.close()
        impostor.close()
    (headers, body), = receiver.received
    assert headers["Host"] == f"{name}:{receiver.port}" and receiver.server_names == [name]
    assert verify_signature(headers["Chinfix-Signature"], body, SECRET)
    assert status is None and "certificate" in error.lower(), error  # checked against the name, not the address
    assert impostor.received == []
    assert resolver.calls == 2, "one resolution per delivery: the check's"


def test_a_callback_needs_the_tenants_webhook_secret(isolated_env: dict[str, str], api_server: str) -> None:
    response = submit(api_server, jpeg_bytes(smooth_rgb(120, 160)), callback_url="https://example.com/hook")
    assert response.status_code == 422 and "CHINFIX_WEBHOOK_SECRETS" in response.json()["error"]["message"]


def test_idempotency_key_returns_the_first_job_per_tenant(isolated_env: dict[str, str], tmp_path: Path, redis_url: str) -> None:
    env = {**isolated_env, "CHINFIX_API_KEYS": "acme:key-acme,globex:key-globex"}
    api, base_url = start_api(env, tmp_path)
    acme = {"Authorization": "Bearer key-acme", "Idempotency-Key": "upload-42"}
    globex = {"Authorization": "Bearer key-globex", "Idempotency-Key": "upload-42"}
    photo = jpeg_bytes(smooth_rgb(120, 160))
    try:
        first = submit(base_url, photo, acme, strength="1")
        again = submit(base_url, photo, acme, strength="1.0")
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"] and again.headers["Location"] == first.headers["Location"]
        queue_length = redis.Redis.from_url(redis_url).llen(f"rq:queue:{isolated_env['CHINFIX_QUEUE_NAME']}")
        assert queue_length == 1, "the retry queued nothing"

        conflict = submit(base_url, photo, acme, strength="0.5")
        assert conflict.status_code == 422 and conflict.json()["error"]["code"] == "idempotency_conflict"
        with_code = httpx.post(
            f"{base_url}/edit",
            files={"image": ("photo.jpg", photo), "code": ("code.npy", npy_bytes(np.zeros((1, 512), np.float32)))},
            data={"strength": "1"},
            headers=acme,
            timeout=30,
        )
        assert with_code.status_code == 422, "a code makes it another request"
        assert with_code.json()["error"]["code"] == "idempotency_conflict"

        other_tenant = submit(base_url, photo, globex, strength="1")
        assert other_tenant.status_code == 202 and other_tenant.json()["id"] != first.json()["id"]
        without_key = submit(base_url, photo, {"Authorization": "Bearer key-acme"})
        assert without_key.status_code == 202 and without_key.json()["id"] != first.json()["id"]
    finally:
        api.stop()


@pytest.mark.skipif(len(PORTRAITS) < 6, reason="the seed portraits are not beside the checkout")
def test_a_variant_reuses_the_inversion(isolated_env: dict[str, str], api_server: str, tmp_path: Path) -> None:
    build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]))
    worker = start_worker({**isolated_env, **FEW_STEPS}, tmp_path)
    try:
        response = submit(api_server, PORTRAITS[5].read_bytes(), refine="warp", debug="true")
        first = wait_for_job(api_server, response.json()["id"], {"succeeded", "failed"})
        assert first["status"] == "succeeded", (first, worker.output())

        variant_response = httpx.post(
            f"{api_server}/jobs/{first['id']}/variants", data={"strength": "0.5"}, timeout=30
        )
        assert variant_response.status_code == 202, variant_response.text
        variant = wait_for_job(api_server, variant_response.json()["id"], {"succeeded", "failed"})
        assert variant["status"] == "succeeded", (variant, worker.output())
        assert variant["variant_of"] == first["id"] and variant["report"]["reused_inversion"] is True
        assert variant["options"]["strength"] == 0.5 and variant["options"]["refine"] == "warp"
        assert "invert" not in variant["report"]["timings_ms"] and "invert" in first["report"]["timings_ms"]
        assert variant["report"]["score_before"] == first["report"]["score_before"], "the same code, the same layers"
        assert variant["report"]["alpha"] == pytest.approx(first["report"]["alpha"] / 2, abs=1e-3)
        assert variant["report"]["quad"] == first["report"]["quad"]
        reconstructions = [
            httpx.get(f"{api_server}/jobs/{job['id']}/debug/reconstruction", timeout=30) for job in (first, variant)
        ]
        assert all(answer.status_code == 200 for answer in reconstructions)
        assert reconstructions[0].content == reconstructions[1].content, "the same code and the same noise maps"

        refined_otherwise = httpx.post(f"{api_server}/jobs/{first['id']}/variants", data={"refine": "none"}, timeout=30)
        other = wait_for_job(api_server, refined_otherwise.json()["id"], {"succeeded", "failed"})
        assert other["status"] == "succeeded" and other["report"]["refine"] == "none", other

        bad = httpx.post(f"{api_server}/jobs/{first['id']}/variants", data={"face": "0"}, timeout=30)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_options"
    finally:
        worker.stop()


def test_a_variant_needs_a_finished_inversion(isolated_env: dict[str, str], tmp_path: Path) -> None:
    with api_and_worker({**isolated_env, **STUB}, tmp_path) as (base_url, _):
        job_id = submit(base_url, jpeg_bytes(smooth_rgb(120, 160))).json()["id"]
        assert wait_for_job(base_url, job_id, {"succeeded", "failed"})["status"] == "succeeded"
        # The stub pipeline inverts nothing, so there is nothing to reuse.
        response = httpx.post(f"{base_url}/jobs/{job_id}/variants", data={"strength": "0.3"}, timeout=30)
        assert response.status_code == 409 and response.json()["error"]["code"] == "variant_unavailable"
        missing = httpx.post(f"{base_url}/jobs/{'0' * 32}/variants", data={"strength": "0.3"}, timeout=30)
        assert missing.status_code == 404


def test_a_variant_is_refused_while_the_queue_is_full(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, **STUB, "CHINFIX_MAX_QUEUED_JOBS": "1"}
    api, base_url = start_api(env, tmp_path)
    try:
        worker = start_worker(env, tmp_path)
        try:
            job_id = submit(base_url, jpeg_bytes(smooth_rgb(120, 160))).json()["id"]
            assert wait_for_job(base_url, job_id, {"succeeded", "failed"})["status"] == "succeeded"
        finally:
            worker.stop()
        variants_url = f"{base_url}/jobs/{job_id}/variants"
        # The stub inverts nothing: with room in the queue the variant reaches the inversion check.
        assert httpx.post(variants_url, data={"strength": "0.3"}, timeout=30).status_code == 409
        assert submit(base_url, jpeg_bytes(smooth_rgb(120, 160))).status_code == 202  # no worker: it waits
        refused = httpx.post(variants_url, data={"strength": "0.3"}, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full", refused.text
        assert refused.headers["retry-after"] == "60"
    finally:
        api.stop()


def test_a_variant_of_another_tenants_job_does_not_exist(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, **STUB, "CHINFIX_API_KEYS": "acme:key-acme,globex:key-globex"}
    acme, globex = {"Authorization": "Bearer key-acme"}, {"Authorization": "Bearer key-globex"}
    with api_and_worker(env, tmp_path) as (base_url, _):
        job_id = submit(base_url, jpeg_bytes(smooth_rgb(120, 160)), acme).json()["id"]
        assert wait_for_job(base_url, job_id, {"succeeded", "failed"}, headers=acme)["status"] == "succeeded"
        own = httpx.post(f"{base_url}/jobs/{job_id}/variants", data={"strength": "0.3"}, headers=acme, timeout=30)
        assert own.status_code == 409, own.text  # the owner reaches the job (the stub inverted nothing)
        other = httpx.post(f"{base_url}/jobs/{job_id}/variants", data={"strength": "0.3"}, headers=globex, timeout=30)
        assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found", other.text


def test_signature_header_is_the_hmac_of_timestamp_and_body() -> None:
    header = signature_header("k", 1700000000, b'{"id":"x"}')
    expected = hmac.new(b"k", b'1700000000.{"id":"x"}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
