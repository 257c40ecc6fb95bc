"""One GPU, many jobs: the batcher that stacks the crops of concurrent jobs into one batched GPU call.

Job threads call `GpuBatcher.run(operation, item)` and block; one batcher thread takes the oldest waiting item,
waits up to `max_wait_seconds` for more items of the same operation and key (up to `max_batch`), runs them as one
`operation.run_batch` and hands each job its own result. If a batch raises, each of its items is run again alone,
so a failing job fails with its own error and its batch-mates go on.

Batching is only correct for operations whose per-item results do not depend on the batch-mates:
`BatchedInversion` relies on `project` giving each crop its own code, noise maps, random stream and loss, and
`BatchedDiffuse` on `refine_diffuse_crops` giving each crop its own code, target, masks, noise maps and loss.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from worker.models.stylegan2 import FixedNoiseGenerator
from worker.pipeline.invert import InversionConfig, InversionResult, WStatistics, project
from worker.pipeline.refine import DiffuseConfig, DiffuseCrop, RefineResult, refine_diffuse_crops
from worker.pipeline.steps import ProgressCallback

log = logging.getLogger("chinfix.worker")

Item = TypeVar("Item")
Result = TypeVar("Result")

RESULT_POLL_SECONDS = 0.1
"""A job thread waits for its result in slices this long, so RQ's job timeout (an exception raised into the
thread between bytecodes) reaches it while it waits."""


class BatchedOperation(Protocol[Item, Result]):
    def batch_key(self, item: Item) -> Hashable:
        """Items batch together only when their keys are equal (same model, same schedule)."""
        ...

    def run_batch(self, items: Sequence[Item]) -> list[Result]:
        """One result per item, in order."""
        ...


@dataclass(eq=False)
class _Request(Generic[Item, Result]):
    operation: BatchedOperation[Item, Result]
    item: Item
    key: Hashable
    future: Future = field(default_factory=Future)

    def joins(self, other: _Request) -> bool:
        return self.operation is other.operation and self.key == other.key


class GpuBatcher:
    """Runs every batched GPU call of a worker process on one thread, stacking up to `max_batch` items."""

    def __init__(self, max_batch: int, max_wait_seconds: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.max_wait_seconds = max_wait_seconds
        self.batch_sizes: list[int] = []
        """How many items each run batch held, in order (tests and benchmarks read it)."""
        self._pending: list[_Request] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="gpu-batcher", daemon=True)

    def __enter__(self) -> GpuBatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join()

    def submit(self, operation: BatchedOperation[Item, Result], item: Item) -> Future:
        request = _Request(operation, item, operation.batch_key(item))
        with self._condition:
            if self._closed:
                raise RuntimeError("the GPU batcher has stopped")
            self._pending.append(request)
            self._condition.notify_all()
        return request.future

    def run(self, operation: BatchedOperation[Item, Result], item: Item) -> Result:
        future = self.submit(operation, item)
        while True:
            try:
                return future.result(timeout=RESULT_POLL_SECONDS)
            except FutureTimeout:
                continue

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Request]:
        """The oldest request and up to max_batch - 1 that join it, waiting at most max_wait for them."""
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if not self._pending:
                return []
            first = self._pending[0]
            deadline = time.monotonic() + self.max_wait_seconds
            while not self._closed and sum(first.joins(other) for other in self._pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch = [request for request in self._pending if first.joins(request)][: self.max_batch]
            self._pending = [request for request in self._pending if request not in batch]
            return batch

    def _execute(self, batch: list[_Request]) -> None:
        self.batch_sizes.append(len(batch))
        operation = batch[0].operation
        log.info("%s: a batch of %d", type(operation).__name__, len(batch))
        try:
            results = operation.run_batch([request.item for request in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            log.warning("a batch of %d failed (%s); running its items one by one", len(batch), error)
            for request in batch:
                self._execute([request])
            return
        for request, result in zip(batch, results, strict=True):
            request.future.set_result(result)


def call_rows(counts: Sequence[int]) -> list[slice]:
    """The rows each call's crops take in the stacked batch, calls in order."""
    starts = np.cumsum([0, *counts])
    return [slice(int(start), int(start) + count) for start, count in zip(starts, counts)]


def fan_out_progress(progresses: Sequence[ProgressCallback | None], rows: Sequence[slice]) -> ProgressCallback:
    """The batch's progress callback: each call hears its own rows of the losses."""

    def fan_out(step: int, total: int, losses: torch.Tensor) -> None:
        for progress, row in zip(progresses, rows, strict=True):
            if progress is None:
                continue
            try:
                progress(step, total, losses[row])
            except Exception:
                # One job's progress store failing must not stop its batch-mates' optimisation.
                log.warning("a job's progress report failed", exc_info=True)

    return fan_out


@dataclass(frozen=True)
class InversionCall:
    """The arguments of one `project` call: targets Nx3xSxS float in [-1, 1], init_wp N x num_ws x w_dim."""

    G: torch.nn.Module
    targets: torch.Tensor
    perceptual_loss: Any
    config: InversionConfig
    w_stats: WStatistics | None
    progress: ProgressCallback | None
    init_wp: np.ndarray | None


class BatchedInversion:
    """Stacks the targets of concurrent `project` calls into one call and splits its result back."""

    def batch_key(self, call: InversionCall) -> Hashable:
        return (id(call.G), id(call.perceptual_loss), id(call.w_stats), call.config, call.init_wp is None)

    def run_batch(self, calls: Sequence[InversionCall]) -> list[InversionResult]:
        first = calls[0]
        rows = call_rows([call.targets.shape[0] for call in calls])
        init_wp = None if first.init_wp is None else np.concatenate([call.init_wp for call in calls])
        progress = fan_out_progress([call.progress for call in calls], rows)
        targets = torch.cat([call.targets for call in calls])
        result = project(first.G, targets, first.perceptual_loss, first.config, first.w_stats, progress, init_wp)
        return [
            InversionResult(
                wp=result.wp[row],
                noise={name: maps[row] for name, maps in result.noise.items()},
                losses=result.losses[row],
            )
            for row in rows
        ]


class BatchingInverter:
    """A drop-in for `project` that sends the call through the process's GPU batcher."""

    def __init__(self, batcher: GpuBatcher) -> None:
        self.batcher = batcher
        self.operation = BatchedInversion()

    def __call__(
        self,
        G: torch.nn.Module,
        targets: torch.Tensor,
        perceptual_loss: Any,
        config: InversionConfig,
        w_stats: WStatistics | None = None,
        progress: ProgressCallback | None = None,
        init_wp: torch.Tensor | np.ndarray | None = None,
    ) -> InversionResult:
        wp = None if init_wp is None else np.asarray(torch.as_tensor(init_wp).detach().cpu(), dtype=np.float32)
        call = InversionCall(G, targets, perceptual_loss, config, w_stats, progress, wp)
        return self.batcher.run(self.operation, call)


@dataclass(frozen=True)
class DiffuseCall:
    """The arguments of one `refine_diffuse` call. G: the generator, or a `FixedNoiseGenerator` view of it with the
    crop's noise maps (each 1 x 1 x R x R)."""

    G: Any
    crop: DiffuseCrop
    perceptual: torch.nn.Module
    config: DiffuseConfig
    progress: ProgressCallback | None

    def generator_and_noise(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
        """The generator itself, and the crop's noise maps (None: the generator's constant noise)."""
        if isinstance(self.G, FixedNoiseGenerator):
            return self.G.generator, self.G.noise
        return self.G, None


class BatchedDiffuse:
    """Runs the diffuse refinements of concurrent jobs as one `refine_diffuse_crops` call, each crop with its own
    code, target, masks and noise maps; crops with the generator's constant noise batch among themselves."""

    def batch_key(self, call: DiffuseCall) -> Hashable:
        generator, noise = call.generator_and_noise()
        return (id(generator), noise is None, id(call.perceptual), call.config)

    def run_batch(self, calls: Sequence[DiffuseCall]) -> list[RefineResult]:
        first = calls[0]
        generator, noise = first.generator_and_noise()
        if noise is not None:
            stacked = {name: torch.cat([call.generator_and_noise()[1][name] for call in calls]) for name in noise}
            generator = FixedNoiseGenerator(generator, stacked)
        progress = fan_out_progress([call.progress for call in calls], call_rows([1] * len(calls)))
        return refine_diffuse_crops(generator, [call.crop for call in calls], first.perceptual, first.config, progress)


class BatchingDiffuser:
    """A drop-in for `refine_diffuse_crop` (`ModelRegistry.diffuser`) that sends the call through the process's GPU
    batcher."""

    def __init__(self, batcher: GpuBatcher) -> None:
        self.batcher = batcher
        self.operation = BatchedDiffuse()

    def __call__(
        self,
        G: Any,
        crop: DiffuseCrop,
        perceptual: torch.nn.Module,
        config: DiffuseConfig,
        progress: ProgressCallback | None = None,
    ) -> RefineResult:
        return self.batcher.run(self.operation, DiffuseCall(G, crop, perceptual, config, progress))
