"""`chinfix train pairs --queue`: pair shards as RQ jobs on the service's Redis, drained by `chinfix worker`.

Every worker listens to the edit queue first and the training queue second, so the fleet that serves edits makes
pairs while it has no photo to edit. A shard's job carries its codes and settings; its result goes back into
Redis, and the command that queued it (or a later run of the same command) writes it into DIR. Shard states live
in one hash per shard:

    queued → running (a lease key the worker renews) → done (result in Redis) → collected (files in DIR)
                    ↘ failed (the error)

A running shard whose lease expired lost its worker (killed, crashed, machine gone): the coordinator queues it
again with the next attempt number, and a late result of the old attempt is ignored. A failed shard stays failed
until the command is run again.
"""

from __future__ import annotations

import io
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import redis
from rq import Queue, get_current_job
from rq.job import Job

from chinfix.contract import RedisKeys
from worker.training.directory import TrainingDir, load_npy, progress_bar
from worker.training.pairs import (
    PairConfig,
    PairPlan,
    ShardResult,
    coarse_copy_path,
    make_shard,
    pairs_done,
    require_pair_models,
    save_shard,
)

if TYPE_CHECKING:
    from chinfix.settings import Settings

log = logging.getLogger("chinfix.training")

KEY_TTL_SECONDS = 30 * 86_400
"""How long shard states and uncollected results stay in Redis: a training run may sit for weeks."""
POLL_SECONDS = 1.0


class ShardStatus:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    COLLECTED = "collected"
    FAILED = "failed"


def _array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _array_from(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class ShardState:
    status: str
    attempt: int
    worker: str
    error: str


class ShardBoard:
    """The shard hashes, leases and results of one queue run, under the deployment's key prefix."""

    def __init__(self, connection: redis.Redis, prefix: str, run_id: str, lease_seconds: int) -> None:
        self.redis = connection
        self.keys = RedisKeys(prefix)
        self.run_id = run_id
        self.lease_seconds = lease_seconds

    def key(self, shard: int) -> str:
        return self.keys.training_shard(self.run_id, shard)

    def lease_key(self, shard: int) -> str:
        return self.keys.training_shard_lease(self.run_id, shard)

    def result_key(self, shard: int) -> str:
        return self.keys.training_shard_result(self.run_id, shard)

    def state(self, shard: int) -> ShardState | None:
        fields = {key.decode(): value.decode() for key, value in self.redis.hgetall(self.key(shard)).items()}
        if not fields:
            return None
        return ShardState(fields["status"], int(fields["attempt"]), fields.get("worker", ""), fields.get("error", ""))

    def is_lost(self, shard: int, state: ShardState) -> bool:
        return state.status == ShardStatus.RUNNING and not self.redis.exists(self.lease_key(shard))

    def submit(self, shard: int, attempt: int) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(shard), self.result_key(shard))
            pipe.hset(self.key(shard), mapping={"status": ShardStatus.QUEUED, "attempt": attempt})
            pipe.expire(self.key(shard), KEY_TTL_SECONDS)
            pipe.execute()

    def _transition(self, shard: int, attempt: int, expected: str, fields: dict, result: ShardResult | None) -> bool:
        """Set `fields` if the shard is still `expected` at `attempt` (a re-queued shard's old job must not
        overwrite the new one's state). WATCH makes the check and the write one step."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(self.key(shard))
                state = self.state(shard)
                if state is None or state.attempt != attempt or state.status != expected:
                    return False
                pipe.multi()
                pipe.hset(self.key(shard), mapping=fields)
                if fields["status"] == ShardStatus.RUNNING:
                    pipe.set(self.lease_key(shard), "1", ex=self.lease_seconds)
                else:
                    pipe.delete(self.lease_key(shard))
                if result is not None:
                    pipe.hset(self.result_key(shard), mapping={k: _array_bytes(v) for k, v in result.arrays().items()})
                    pipe.expire(self.result_key(shard), KEY_TTL_SECONDS)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def start(self, shard: int, attempt: int, worker: str) -> bool:
        return self._transition(shard, attempt, ShardStatus.QUEUED, {"status": ShardStatus.RUNNING, "worker": worker}, None)

    def renew(self, shard: int) -> None:
        self.redis.set(self.lease_key(shard), "1", ex=self.lease_seconds)

    def finish(self, shard: int, attempt: int, result: ShardResult) -> bool:
        return self._transition(shard, attempt, ShardStatus.RUNNING, {"status": ShardStatus.DONE}, result)

    def fail(self, shard: int, attempt: int, message: str) -> bool:
        return self._transition(shard, attempt, ShardStatus.RUNNING, {"status": ShardStatus.FAILED, "error": message}, None)

    def take_result(self, shard: int) -> ShardResult:
        fields = {key.decode(): _array_from(value) for key, value in self.redis.hgetall(self.result_key(shard)).items()}
        return ShardResult(fields["with"], fields["without"], fields["index"], fields["skipped"])

    def mark_collected(self, shard: int) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(shard), "status", ShardStatus.COLLECTED)
            pipe.delete(self.result_key(shard))
            pipe.execute()


# --- the worker side ------------------------------------------------------------------------------------------------


def run_pair_shard(
    run_id: str, shard: int, attempt: int, wp: np.ndarray, indices: np.ndarray, coarse_normal: np.ndarray, config: dict
) -> str:
    """The RQ job: one shard on this worker's models. Returns what happened, for RQ's own record."""
    from worker.jobs import LeaseKeeper
    from worker.registry import active_registry

    registry = active_registry()
    settings = registry.settings
    board = ShardBoard(get_current_job().connection, settings.key_prefix, run_id, settings.lease_seconds)
    if not board.start(shard, attempt, socket.gethostname()):
        log.info("training shard %d attempt %d is superseded or gone; skipping", shard, attempt)
        return "superseded"
    with LeaseKeeper(lambda: board.renew(shard), settings.lease_seconds / 3, f"shard-{shard}"):
        try:
            require_pair_models(registry)
            result = make_shard(registry, wp, indices, coarse_normal, PairConfig.from_dict(config))
        except Exception as error:
            log.exception("training shard %d failed", shard)
            board.fail(shard, attempt, f"{type(error).__name__}: {error}")
            return "failed"
    board.finish(shard, attempt, result)
    log.info("training shard %d done: %d pairs, %d skipped", shard, len(result.index), len(result.skipped))
    return "done"


# --- the coordinator side -------------------------------------------------------------------------------------------


def board_for(settings: Settings, plan: PairPlan) -> ShardBoard:
    from chinfix.jobs import connect_redis

    return ShardBoard(connect_redis(settings), settings.key_prefix, plan.run_id, settings.lease_seconds)


def shard_job_id(settings: Settings, plan: PairPlan, shard: int, attempt: int) -> str:
    return f"{settings.key_prefix}-train-{plan.run_id}-{shard}-{attempt}"


def enqueue_shard(
    settings: Settings, board: ShardBoard, directory: TrainingDir, plan: PairPlan, shard: int, attempt: int
) -> None:
    indices = np.array(plan.shards[shard], np.int64)
    board.submit(shard, attempt)
    Queue(settings.effective_training_queue, connection=board.redis).enqueue(
        run_pair_shard,
        args=(plan.run_id, shard, attempt, directory.load_wp(indices), indices,
              load_npy(coarse_copy_path(directory)), plan.to_json()["config"]),
        job_id=shard_job_id(settings, plan, shard, attempt),
        job_timeout=settings.training_shard_timeout_seconds,
        result_ttl=KEY_TTL_SECONDS,
        description=f"training pairs shard {shard} attempt {attempt} of {directory.root}",
    )  # fmt: skip


def coordinate(
    settings: Settings, board: ShardBoard, directory: TrainingDir, plan: PairPlan, retry_failed: bool
) -> dict[str, list[int]]:
    """One pass over the shards: collect finished ones into DIR, queue new, lost (and, asked, failed) ones.
    Returns the shards by state after the pass."""
    states: dict[str, list[int]] = {name: [] for name in ("collected", "queued", "running", "failed")}
    for shard in range(len(plan.shards)):
        if directory.pair_shard_done(shard):
            states["collected"].append(shard)
            continue
        state = board.state(shard)
        if state is not None and state.status == ShardStatus.DONE:
            save_shard(directory, shard, board.take_result(shard))
            board.mark_collected(shard)
            states["collected"].append(shard)
            continue
        lost = state is not None and board.is_lost(shard, state)
        if lost:
            log.warning("training shard %d lost its worker (%s); queueing it again", shard, state.worker)
        # a queued shard whose RQ job is gone (Redis evicted it, someone emptied the queue) would wait forever
        dropped = state is not None and state.status == ShardStatus.QUEUED and not Job.exists(
            shard_job_id(settings, plan, shard, state.attempt), connection=board.redis
        )
        retry = state is not None and state.status == ShardStatus.FAILED and retry_failed
        if state is None or state.status == ShardStatus.COLLECTED or lost or dropped or retry:
            enqueue_shard(settings, board, directory, plan, shard, 1 if state is None else state.attempt + 1)
            states["queued"].append(shard)
        else:
            states[state.status].append(shard)
    return states


def run_pairs_on_queue(
    settings: Settings, directory: TrainingDir, plan: PairPlan, wait: bool = True, show_progress: bool = True
) -> dict[str, list[int]]:
    """Queue the plan's unfinished shards and, with `wait`, collect them as workers finish (queueing lost ones
    again) until none is queued or running. Re-running it resumes, and retries failed shards."""
    board = board_for(settings, plan)
    states = coordinate(settings, board, directory, plan, retry_failed=True)
    with progress_bar(plan.num_pairs, "pairs", pairs_done(directory, plan), unit="pair", enabled=show_progress) as bar:
        while wait and (states["queued"] or states["running"]):
            time.sleep(POLL_SECONDS)
            states = coordinate(settings, board, directory, plan, retry_failed=False)
            bar.update(pairs_done(directory, plan) - bar.n)
    return states


def shard_report(settings: Settings, directory: TrainingDir, plan: PairPlan) -> list[dict]:
    """One row per shard for `chinfix train status`: read-only (nothing is queued or collected)."""
    board = board_for(settings, plan)
    rows = []
    for shard, indices in enumerate(plan.shards):
        state = board.state(shard)
        if directory.pair_shard_done(shard):
            status = "collected"
        elif state is None:
            status = "not queued"
        elif board.is_lost(shard, state):
            status = "lost"
        else:
            status = state.status
        rows.append({
            "shard": shard, "samples": len(indices), "status": status,
            "attempt": state.attempt if state else 0, "worker": state.worker if state else "",
            "error": state.error if state else "",
        })  # fmt: skip
    return rows
