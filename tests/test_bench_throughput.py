"""`chinfix bench throughput` runs the real worker loop end to end and prints its table (issue 13's done-when).

The smallest run that still goes through every part: two seed portraits, one job at a time and two job threads
sharing the GPU batcher, a 32 px random-weight generator and two optimisation steps each. No timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from worker.bench import SEED_PORTRAITS

pytestmark = pytest.mark.skipif(not any(SEED_PORTRAITS.glob("*.jpg")), reason="the seed portraits are not beside the checkout")


def test_bench_throughput_prints_a_row_per_batch_with_every_job_done(isolated_env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "chinfix.cli", "bench", "throughput", "--device", "cpu", "--jobs", "2",
               "--batch", "1,2", "--resolution", "32", "--steps", "2", "--diffuse-steps", "2", "--refine", "diffuse"]  # fmt: skip
    # a long batching window: the two photos' CPU stages take different times, and the check below wants them joined
    env = {**isolated_env, "CHINFIX_BATCH_WAIT_MS": "5000"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = re.findall(r"^\W*(\d+)\s*\W\s*(\d+)/(\d+)\s*\W\s*([\d.]+)", finished.stdout, flags=re.MULTILINE)
    assert [(batch, done, queued) for batch, done, queued, _ in rows] == [("1", "2", "2"), ("2", "2", "2")], finished.stdout
    assert all(float(per_minute) > 0 for *_, per_minute in rows)
    mean_gpu_batch = [line.split()[-2] for line in finished.stdout.splitlines() if re.match(r"^\W*[12]\s", line)]
    assert mean_gpu_batch[0] == "-" and float(mean_gpu_batch[1]) > 1.0, finished.stdout
