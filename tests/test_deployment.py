"""The container files, checked as far as a machine without a Docker engine can check them."""

from __future__ import annotations

import re
import shutil
import subprocess

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

    assert set(compose("--services").split()) == {"redis", "api", "callbacks", "worker"}
    assert set(compose("--volumes").split()) == {"models", "redis-data"}
    resolved = compose()
    assert "driver: nvidia" in resolved and "- gpu" in resolved
    assert "condition: service_healthy" in resolved and "redis-cli" in resolved
