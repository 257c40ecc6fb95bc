"""The model store: manifest, presence, verification, and `pull` against a local HTTP server."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chinfix.cli import main as chinfix_main
from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError
from model_store.store import ModelStore, ModelStoreError, VerifyStatus, load_manifest
from tests.seed_data import SEED_DATA

SEED_BOUNDARIES = SEED_DATA / "boundaries"
BRIEF_MODEL_NAMES = {
    "stylegan2_ffhq",
    "fine_boundary",
    "fine_intercept",
    "coarse_boundary",
    "pose_yaw_boundary",
    "face_parsing_bisenet",
    "dlib_landmarks",
    "fan_landmarks",
    "vgg16_perceptual",
    "fan_face_detector",
    "vgg16_imagenet",
    "lpips_vgg_lin",
    "double_chin_classifier",
    "dlib_face_recognition",
}
PUBLISHED_BOUNDARY_SHA256 = {
    "fine_boundary": "590e928984c6230b7bcb58d6ce08c76df1ec995de3ed743b32fbb9c289109777",
    "fine_intercept": "83b758f7af015372497461d725c284aae152126a71cdf329e52b95b355e8fe44",
    "coarse_boundary": "776d6db636e9e0fe88df7e73bf6ddc1c31d1f25d0f79618c6655fa4ba6a477fc",
    "pose_yaw_boundary": "9d1bf891ec5c02b3a4b68c117c205f24c9f52e60f44bfe440951656f61824fb8",
}
SEED_FILES = {
    "fine_boundary": "fine/double_chin_wp.npy",
    "fine_intercept": "fine/double_chin_wp_intercept.npy",
    "coarse_boundary": "coarse/double_chin_w_psi0.8.npy",
    "pose_yaw_boundary": "coarse/pose_yaw_w_psi0.5.npy",
}
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several read chunks


class RangeFileHandler(BaseHTTPRequestHandler):
    """Serves `server.payload` at any path, honouring `Range: bytes=N-` unless told not to; can cut
    one response short (the server closes the connection mid-body) to simulate a dropped transfer."""

    def do_GET(self) -> None:
        server = self.server
        server.range_headers.append(self.headers.get("Range"))
        if self.path.endswith("/missing.bin"):
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not server.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(server.payload):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
        else:
            self.send_response(200)
        body = server.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:
            self.wfile.write(body[: server.cut_after])
            server.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeFileHandler)
    server.payload = PAYLOAD
    server.cut_after = None
    server.ignore_range = False
    server.range_headers = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def toy_store(root: Path, url: str, sha256: str | None = None, size: int | None = None) -> ModelStore:
    manifest = root / "manifest.toml"
    manifest.write_text(
        "[models.toy]\n"
        'filename = "toy.bin"\n'
        f'url = "{url}"\n'
        f'sha256 = "{hashlib.sha256(PAYLOAD).hexdigest() if sha256 is None else sha256}"\n'
        f"size = {len(PAYLOAD) if size is None else size}\n"
        'license = "test"\n'
        'stage = "test"\n'
        'description = "1 MiB test payload"\n'
    )
    return ModelStore(root / "models", manifest=manifest)


class RecordingProgress:
    def __init__(self) -> None:
        self.starts: list[tuple[str, int | None, int]] = []
        self.advanced = 0
        self.finished = 0

    def start(self, name: str, total: int | None, completed: int) -> None:
        self.starts.append((name, total, completed))

    def advance(self, nbytes: int) -> None:
        self.advanced += nbytes

    def finish(self) -> None:
        self.finished += 1


def server_url(server: ThreadingHTTPServer, name: str = "toy.bin") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def test_pull_downloads_checks_and_renames(tmp_path: Path, file_server: ThreadingHTTPServer) -> None:
    store = toy_store(tmp_path, server_url(file_server))
    progress = RecordingProgress()
    path = store.pull(["toy"], progress=progress)["toy"]
    assert path == tmp_path / "models" / "toy.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "models" / "toy.bin.part").exists()
    assert progress.starts == [("toy", len(PAYLOAD), 0)] and progress.advanced == len(PAYLOAD)
    assert store.verify(["toy"])["toy"].status == VerifyStatus.VERIFIED

    store.pull(["toy"], progress=progress)  # present and verified: no second request
    assert len(file_server.range_headers) == 1


def test_pull_resumes_an_interrupted_transfer(tmp_path: Path, file_server: ThreadingHTTPServer) -> None:
    store = toy_store(tmp_path, server_url(file_server))
    file_server.cut_after = 300_000
    with pytest.raises(ModelStoreError, match="interrupted"):
        store.pull(["toy"], progress=False)
    partial = tmp_path / "models" / "toy.bin.part"
    assert partial.stat().st_size == 300_000 and not store.is_present("toy")

    progress = RecordingProgress()
    store.pull(["toy"], progress=progress)
    assert file_server.range_headers == [None, "bytes=300000-"]
    assert progress.starts == [("toy", len(PAYLOAD), 300_000)]
    assert progress.advanced == len(PAYLOAD) - 300_000
    assert store.path("toy").read_bytes() == PAYLOAD and not partial.exists()


def test_pull_restarts_when_the_server_ignores_ranges(tmp_path: Path, file_server: ThreadingHTTPServer) -> None:
    store = toy_store(tmp_path, server_url(file_server))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "toy.bin.part").write_bytes(b"stale bytes")
    file_server.ignore_range = True
    store.pull(["toy"], progress=False)
    assert store.path("toy").read_bytes() == PAYLOAD


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path, file_server: ThreadingHTTPServer) -> None:
    store = toy_store(tmp_path, server_url(file_server), sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ModelStoreError, match="failed its check"):
        store.pull(["toy"], progress=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_wrong_size_is_refused(tmp_path: Path, file_server: ThreadingHTTPServer) -> None:
    store = toy_store(tmp_path, server_url(file_server), sha256="", size=len(PAYLOAD) + 1)
    with pytest.raises(ModelStoreError, match="failed its check"):
        store.pull(["toy"], progress=False)
    assert not store.is_present("toy")


def test_http_errors_are_reported(tmp_path: Path, file_server: ThreadingHTTPServer) -> None:
    store = toy_store(tmp_path, server_url(file_server, "missing.bin"))
    with pytest.raises(ModelStoreError, match="HTTP 404"):
        store.pull(["toy"], progress=False)


def test_no_network_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    store = toy_store(tmp_path, f"http://127.0.0.1:{closed_port}/toy.bin")
    started = time.monotonic()
    with pytest.raises(ModelStoreError, match="cannot download .* Check the network"):
        store.pull(["toy"], progress=False, connect_timeout=2.0)
    assert time.monotonic() - started < 5
    assert not (tmp_path / "models").exists()


def test_progress_bar_is_drawn(tmp_path: Path, file_server: ThreadingHTTPServer, capsys: pytest.CaptureFixture) -> None:
    toy_store(tmp_path, server_url(file_server)).pull(["toy"], progress=True)
    drawn = capsys.readouterr().err
    assert "toy" in drawn and "1.0 MB" in drawn


# ---------------------------------------------------------------------------------------------


def test_manifest_names_every_model_the_service_uses() -> None:
    entries = load_manifest()
    assert set(entries) == BRIEF_MODEL_NAMES
    for entry in entries.values():
        assert entry.filename and entry.url.startswith("https://") and entry.license and entry.stage
        assert entry.sha256 == "" or len(entry.sha256) == 64
    assert {name: entries[name].sha256 for name in PUBLISHED_BOUNDARY_SHA256} == PUBLISHED_BOUNDARY_SHA256
    assert entries["dlib_landmarks"].packaged and entries["dlib_face_recognition"].packaged


@pytest.mark.skipif(not SEED_BOUNDARIES.is_dir(), reason="../shared/seed-data is not beside the checkout")
def test_seed_boundaries_verify_against_the_manifest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for name, relative in SEED_FILES.items():
        shutil.copyfile(SEED_BOUNDARIES / relative, store.path(name))
    assert {name: result.status for name, result in store.verify(SEED_FILES).items()} == dict.fromkeys(
        SEED_FILES, VerifyStatus.VERIFIED
    )
    corrupted = bytearray(store.path("fine_intercept").read_bytes())
    corrupted[-1] ^= 1
    store.path("fine_intercept").write_bytes(bytes(corrupted))
    assert store.verify(["fine_intercept"])["fine_intercept"].status == VerifyStatus.MISMATCH
    assert chinfix_main(["models", "verify", "--model-dir", str(tmp_path), "fine_boundary"]) == 0
    assert chinfix_main(["models", "verify", "--model-dir", str(tmp_path), "fine_intercept"]) == 1


def test_presence_and_require(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.path("stylegan2_ffhq") == tmp_path / "stylegan2-ffhq-1024x1024.pkl"
    assert store.missing(["stylegan2_ffhq", "fine_boundary"]) == ["stylegan2_ffhq", "fine_boundary"]
    with pytest.raises(PipelineError) as raised:
        store.require("fine_boundary")
    assert raised.value.code == ErrorCode.MODEL_MISSING
    assert "chinfix models pull fine_boundary" in raised.value.message
    store.path("fine_boundary").write_bytes(b"x")
    assert store.is_present("fine_boundary") and store.require("fine_boundary") == tmp_path / "fine_boundary.npy"
    assert store.verify(["stylegan2_ffhq"])["stylegan2_ffhq"].status == VerifyStatus.MISSING
    store.path("stylegan2_ffhq").write_bytes(b"no hash published")
    assert store.verify(["stylegan2_ffhq"])["stylegan2_ffhq"].status == VerifyStatus.UNCHECKED
    with pytest.raises(ModelStoreError, match="unknown model"):
        store.entry("stylegan3")


@pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None, reason="package not installed")
def test_dlib_landmarks_come_from_the_pip_package(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    path = store.path("dlib_landmarks")
    assert path.name == "shape_predictor_68_face_landmarks.dat" and "face_recognition_models" in str(path)
    assert store.is_present("dlib_landmarks")
    assert store.pull(["dlib_landmarks"], progress=False) == {"dlib_landmarks": path}


def test_list_command_shows_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert chinfix_main(["models", "list", "--model-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for name in BRIEF_MODEL_NAMES:
        assert name in table
