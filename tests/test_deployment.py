"""The container files, checked as far as a machine without a Docker engine can check them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.service_harness import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


def _stage(name: str) -> str:
    """The Dockerfile's lines from `FROM ... AS name` up to the next FROM."""
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, flags=re.M | re.S)
    assert match, f"no stage {name!r} in the Dockerfile"
    return match.group(1)


def test_api_image_has_no_gpu_stack() -> None:
    api = _stage("api")
    assert 'pip install ".[api]"' in api
    assert "torch" not in api and "COPY worker" not in api


def test_worker_image_has_cuda_torch_and_the_model_volume() -> None:
    worker = _stage("worker")
    assert re.search(r'pip install "torch==2\.13\.0" --index-url', worker)
    assert 'pip install ".[worker]"' in worker
    assert "CHINFIX_MODEL_DIR=/models" in worker and 'VOLUME ["/models"]' in worker
    assert 'CMD ["chinfix", "worker"]' in worker


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose (apt-get install docker-compose)")
def test_compose_file_parses_with_redis_api_and_a_gpu_worker() -> None:
    def compose(*args: str) -> str:
        return subprocess.run(
            ["docker-compose", "config", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout

    assert set(compose("--services").split()) == {"redis", "api", "worker"}
    assert set(compose("--volumes").split()) == {"models", "redis-data"}
    resolved = compose()
    assert "driver: nvidia" in resolved and "- gpu" in resolved
    assert "condition: service_healthy" in resolved and "redis-cli" in resolved


def _compose_file() -> dict:
    import yaml

    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_runs_redis_with_appendonly() -> None:
    command = _compose_file()["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_compose_refuses_an_open_api_unless_asked(tmp_path) -> None:
    """The compose API service says CHINFIX_ALLOW_OPEN=false unless the operator sets it; with no keys, `serve`
    then exits at once with a clear message instead of publishing an open API."""
    api_env = _compose_file()["services"]["api"]["environment"]
    assert api_env["CHINFIX_ALLOW_OPEN"] == "${CHINFIX_ALLOW_OPEN:-false}"
    env = {"PATH": "/usr/bin:/bin", "CHINFIX_API_KEYS": "", "CHINFIX_ALLOW_OPEN": "false", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "chinfix.cli", "serve", "--port", "1"], env=env, capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr
    assert "CHINFIX_API_KEYS" in run.stderr and "CHINFIX_ALLOW_OPEN=true" in run.stderr
    assert "Traceback" not in run.stderr
