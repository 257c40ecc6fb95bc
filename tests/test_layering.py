"""The API side must run without the GPU stack: its image has no torch."""

from __future__ import annotations

import subprocess
import sys

from tests.service_harness import REPO_ROOT

GPU_STACK = ("torch", "cv2", "dlib", "face_alignment", "scipy")


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
