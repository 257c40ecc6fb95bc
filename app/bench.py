"""`chinfix bench api`: what an upload costs the API process, measured over real HTTP against a real Redis.

Two rows: POST /edit latency for a ~3 MB 12-megapixel JPEG (sequential requests on one connection), and the API
process's peak RSS while decode bombs are in flight at once (6245x6245 PNGs of ~114 KB, 117 MB decoded). Each row
runs its own fresh `chinfix serve` process, so its peak RSS is its own. Torch-free: it runs where the API runs.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import secrets
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

import httpx
import numpy as np
import redis
from PIL import Image
from rich.table import Table

from chinfix.embedded_redis import EmbeddedRedis
from chinfix.jobs import redis_answers
from chinfix.settings import Settings
from chinfix.terminal import console

JPEG_SIZE = (4000, 3000)
JPEG_TARGET_BYTES = 3_000_000
BOMB_SIDE = 6245


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=200, help="timed POSTs of the JPEG")
    parser.add_argument("--bombs", type=int, default=8, help="PNG bombs sent at once")


def run(args: argparse.Namespace) -> int:
    jpeg = photo_jpeg()
    bomb = png_bomb(BOMB_SIDE)
    with redis_url() as url:
        with api_process(url) as (base_url, pid):
            latencies = post_latencies_ms(base_url, jpeg, args.requests)
            jpeg_peak = peak_rss_mb(pid)
        with api_process(url) as (base_url, pid):
            idle = resident_mb(pid)
            bomb_seconds = post_at_once(base_url, bomb, args.bombs)
            bomb_peak = peak_rss_mb(pid)
    table = Table(title=f"chinfix bench api ({os.cpu_count()} CPUs)")
    for column in ("upload", "requests", "p50 ms", "p99 ms", "max ms", "API RSS idle MB", "API peak RSS MB"):
        table.add_column(column)
    table.add_row(
        f"JPEG {JPEG_SIZE[0]}x{JPEG_SIZE[1]}, {len(jpeg) / 1e6:.1f} MB",
        f"{args.requests} one after another",
        f"{statistics.median(latencies):.1f}",
        f"{np.percentile(latencies, 99):.1f}",
        f"{max(latencies):.1f}",
        "-",
        f"{jpeg_peak:.0f}",
    )
    table.add_row(
        f"PNG bomb {BOMB_SIDE}x{BOMB_SIDE}, {len(bomb) / 1e3:.0f} KB",
        f"{args.bombs} at once",
        "-",
        "-",
        f"{max(bomb_seconds) * 1000:.1f}",
        f"{idle:.0f}",
        f"{bomb_peak:.0f}",
    )
    console().print(table)
    return 0


def photo_jpeg() -> bytes:
    """A 12-megapixel JPEG of about 3 MB: smooth shapes plus sensor-like noise, as a phone photo compresses."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize(JPEG_SIZE, Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.float32) + rng.normal(0.0, 7.0, (JPEG_SIZE[1], JPEG_SIZE[0], 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    best = b""
    for quality in range(70, 99, 2):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        if abs(buffer.tell() - JPEG_TARGET_BYTES) < abs(len(best) - JPEG_TARGET_BYTES):
            best = buffer.getvalue()
    return best


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(side: int) -> bytes:
    """A valid side x side RGB PNG of zeros: about 114 KB at 6245 px, side*side*3 bytes once decoded."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


@contextmanager
def redis_url() -> Iterator[str]:
    """The configured Redis when it answers, else an embedded one for the run."""
    url = Settings().effective_redis_url
    if redis_answers(url):
        yield url
        return
    with tempfile.TemporaryDirectory() as state_dir:
        embedded = EmbeddedRedis(Path(state_dir))
        try:
            yield embedded.start()
        finally:
            embedded.stop()


@contextmanager
def api_process(url: str) -> Iterator[tuple[str, int]]:
    """`chinfix serve` on a free port with its own key prefix and queue, removed afterwards: (base URL, pid)."""
    namespace = f"bench-{secrets.token_hex(4)}"
    port = _free_port()
    env = {
        **os.environ,
        "CHINFIX_REDIS_URL": url,
        "CHINFIX_KEY_PREFIX": namespace,
        "CHINFIX_QUEUE_NAME": namespace,
        "CHINFIX_API_KEYS": "",
        "CHINFIX_RATE_LIMIT": "",
        "CHINFIX_MAX_QUEUED_JOBS": "100000",
        "CHINFIX_TENANT_MAX_ACTIVE_JOBS": "100000",
    }
    command = [sys.executable, "-m", "chinfix.cli", "serve", "--port", str(port)]
    api = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base_url, api)
        yield base_url, api.pid
    finally:
        api.terminate()
        api.wait(timeout=30)
        _remove_namespace(redis.Redis.from_url(url), namespace)


def post_latencies_ms(base_url: str, data: bytes, count: int, warmup: int = 5) -> list[float]:
    """Wall time of each POST, from sending to the answer. The multipart body is encoded once beforehand, so
    the figures are the API's (and the loopback's), not the client's encoding."""
    request = httpx.Request("POST", f"{base_url}/edit", files={"image": ("photo.jpg", data, "image/jpeg")})
    body, content_type = request.read(), request.headers["content-type"]
    samples = []
    with httpx.Client(timeout=60) as client:
        for index in range(warmup + count):
            start = time.perf_counter()
            response = client.post(f"{base_url}/edit", content=body, headers={"content-type": content_type})
            elapsed = (time.perf_counter() - start) * 1000.0
            if response.status_code != 202:
                raise RuntimeError(f"POST /edit answered {response.status_code}: {response.text}")
            if index >= warmup:
                samples.append(elapsed)
    return samples


def post_at_once(base_url: str, data: bytes, count: int) -> list[float]:
    """Send `count` uploads concurrently; the seconds each took."""

    def post(_: int) -> float:
        start = time.perf_counter()
        response = httpx.post(f"{base_url}/edit", files={"image": ("bomb.png", data, "image/png")}, timeout=300)
        if response.status_code != 202:
            raise RuntimeError(f"POST /edit answered {response.status_code}: {response.text}")
        return time.perf_counter() - start

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def peak_rss_mb(pid: int) -> float:
    return _proc_status_mb(pid, "VmHWM")


def resident_mb(pid: int) -> float:
    return _proc_status_mb(pid, "VmRSS")


def _proc_status_mb(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(base_url: str, api: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError("the API exited while starting")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the API did not start")


def _remove_namespace(connection: redis.Redis, namespace: str) -> None:
    """The bench's keys: chinfix's under its prefix, RQ's queue and the RQ jobs it held."""
    queue_key = f"rq:queue:{namespace}"
    job_keys = [f"rq:job:{job_id.decode()}" for job_id in connection.lrange(queue_key, 0, -1)]
    keys = [*connection.scan_iter(match=f"{namespace}:*"), *connection.scan_iter(match=f"rq:*:{namespace}"), *job_keys]
    for start in range(0, len(keys), 500):
        connection.delete(*keys[start : start + 500])
    connection.srem("rq:queues", queue_key)
