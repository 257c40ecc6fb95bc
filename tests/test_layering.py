"""The API side must run without the GPU stack: its image has no torch and no `worker` package."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

from tests.service_harness import REPO_ROOT

GPU_STACK = ("torch", "cv2", "dlib", "face_alignment", "scipy")
API_IMAGE_PACKAGES = ("chinfix", "app", "model_store")
"""What the Dockerfile's `api` target copies."""


def test_api_and_cli_import_no_gpu_stack() -> None:
    probe = (
        "import sys, app.main, chinfix.cli\n"
        "chinfix.cli.build_parser()\n"
        "app.main.create_app()\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {GPU_STACK!r})\n"
        "print(','.join(loaded))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "", f"the API side imported: {completed.stdout.strip()}"


def test_cli_and_api_start_from_the_api_image_packages_alone(tmp_path: Path) -> None:
    for package in API_IMAGE_PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    # -S with the site-packages directories appended by hand: their .pth files (the editable install's
    # finder, which would serve `worker` from the checkout) are not processed.
    search_path = [str(tmp_path), *site.getsitepackages()]
    probe = (
        f"import sys; sys.path[:0] = {search_path!r}\n"
        "import importlib.util; assert importlib.util.find_spec('worker') is None, 'worker is importable'\n"
        "import app.main, chinfix.cli\n"
        "app.main.create_app()\n"
        "chinfix.cli.main(['serve', '--help'])\n"
    )
    completed = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: chinfix serve" in completed.stdout
