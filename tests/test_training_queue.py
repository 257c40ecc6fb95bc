"""`chinfix train pairs --queue` with the real Redis and real `chinfix worker` processes.

Shards run on a worker; a worker killed (SIGKILL) in the middle of a shard does not lose it: its lease expires,
the coordinator queues it again, another worker runs it, and its pairs equal those the same shard makes in-process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from chinfix.cli import main
from chinfix.settings import Settings
from tests.conftest import remove_namespace
from tests.generator_fixtures import single_threaded_torch  # noqa: F401
from tests.service_harness import start_worker
from tests.test_training import PLANTED, build_training_store, pair_threshold
from worker.registry import ModelRegistry
from worker.training.directory import TrainingDir
from worker.training.pairs import PairConfig, load_plan, make_shard
from worker.training.queue import ShardBoard, ShardStatus, run_pairs_on_queue

pytestmark = pytest.mark.usefixtures("single_threaded_torch")

LEASE_SECONDS = 3
SLOW_DIFFUSE = ["--diffuse-steps", "12", "--diffuse-lr", "0.1"]
"""Long enough (a few seconds a shard) to kill a worker in the middle of one."""


@pytest.fixture
def queue_env(isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {**isolated_env, "CHINFIX_LEASE_SECONDS": str(LEASE_SECONDS), "OMP_NUM_THREADS": "1"}
    for name, value in env.items():
        if name.startswith("CHINFIX_"):
            monkeypatch.setenv(name, value)
    build_training_store(Path(env["CHINFIX_MODEL_DIR"]))
    yield env
    settings = Settings()
    remove_namespace(redis.Redis.from_url(env["CHINFIX_REDIS_URL"]), settings.effective_training_queue)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_queued_shards_survive_a_killed_worker(
    queue_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "run"
    directory = TrainingDir(root)
    assert main(["train", "sample", str(root), "--num", "200"]) == 0
    assert main(["train", "score", str(root), "--scorer", "tests.planted_attribute:planted_scorer"]) == 0
    assert main(["train", "coarse", str(root), "-o", str(tmp_path / "coarse.npy")]) == 0
    threshold = pair_threshold(directory, 6)
    assert main(["train", "pairs", str(root), "--coarse", str(tmp_path / "coarse.npy"), "--threshold", str(threshold),
                 "--shard-size", "2", *SLOW_DIFFUSE, *PLANTED, "--queue", "--no-wait"]) == 0  # fmt: skip
    plan = load_plan(directory)
    settings = Settings()
    board = ShardBoard(redis.Redis.from_url(settings.effective_redis_url), settings.key_prefix, plan.run_id,
                       settings.lease_seconds)  # fmt: skip
    assert [board.state(shard).status for shard in range(3)] == [ShardStatus.QUEUED] * 3

    doomed = start_worker(queue_env, tmp_path, "doomed-worker")
    try:
        wait_until(lambda: any(board.state(s).status == ShardStatus.RUNNING for s in range(3)), 60, "a running shard")
        killed = next(s for s in range(3) if board.state(s).status == ShardStatus.RUNNING)
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
    finally:
        doomed.stop()
    assert board.state(killed).status == ShardStatus.RUNNING  # nobody has noticed yet
    survivor = start_worker(queue_env, tmp_path, "survivor-worker")
    try:
        wait_until(lambda: board.is_lost(killed, board.state(killed)), 3 * LEASE_SECONDS, "the lease to expire")
        capsys.readouterr()
        assert main(["train", "status", str(root), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["shards"][killed]["status"] == "lost"
        states = run_pairs_on_queue(settings, directory, plan, wait=True, show_progress=False)
    finally:
        survivor.stop()
    assert states["collected"] == [0, 1, 2] and not states["failed"], (states, survivor.output())
    assert board.state(killed).attempt == 2
    assert main(["train", "status", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"collected": 3}

    # the re-run shard holds the pairs this process makes for the same samples
    registry = ModelRegistry.load(settings)
    indices = np.load(directory.pair_path(killed, "index"))
    expected = make_shard(registry, directory.load_wp(indices), indices, np.load(root / "pairs" / "coarse.npy"),
                          PairConfig.from_dict(plan.to_json()["config"]))  # fmt: skip
    assert np.allclose(np.load(directory.pair_path(killed, "without")), expected.without_codes, atol=1e-5)


def test_a_shard_dropped_from_the_queue_is_queued_again(queue_env: dict[str, str], tmp_path: Path) -> None:
    from rq.job import Job

    from worker.training.queue import board_for, coordinate, shard_job_id

    root = tmp_path / "run"
    directory = TrainingDir(root)
    assert main(["train", "sample", str(root), "--num", "100"]) == 0
    assert main(["train", "score", str(root), "--scorer", "tests.planted_attribute:planted_scorer"]) == 0
    assert main(["train", "coarse", str(root), "-o", str(tmp_path / "coarse.npy")]) == 0
    assert main(["train", "pairs", str(root), "--coarse", str(tmp_path / "coarse.npy"), "--threshold",
                 str(pair_threshold(directory, 4)), "--shard-size", "2", *PLANTED, "--queue", "--no-wait"]) == 0  # fmt: skip
    settings, plan = Settings(), load_plan(directory)
    board = board_for(settings, plan)
    Job.fetch(shard_job_id(settings, plan, 0, 1), connection=board.redis).delete()
    states = coordinate(settings, board, directory, plan, retry_failed=False)
    assert states["queued"] == [0, 1]
    assert (board.state(0).attempt, board.state(1).attempt) == (2, 1)
    assert Job.exists(shard_job_id(settings, plan, 0, 2), connection=board.redis)
