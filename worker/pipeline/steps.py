"""Running an optimisation loop's steps: eagerly, or on CUDA a few eagerly and then one step captured as a CUDA graph
and replayed for the rest.

A step, as the projector and the diffuse refinement build it, is a function of no arguments that reads every per-step
input (learning rate, exploration noise, where to write its loss) from device tensors at a device step counter, writes
its loss into row `counter` of a steps x N device buffer and then advances the counter on the device. Nothing in it
depends on a Python number that changes between steps, so a captured step, replayed, is step k at the k-th replay.

Capture (`CHINFIX_CAPTURE=auto`, CUDA only) follows PyTorch's recipe for whole-network capture: warm-up steps on a
side stream (they initialise Adam's state, let cuDNN autotune and autograd start its device threads; they are real
steps of the schedule), then one step captured on that same stream, then replays. If the capture raises, the rest of
the steps run eagerly and give the same numbers. `run_with_capture` is that whole order of things and runs on the CPU
in the tests (with a stand-in capture that records a step without running it, as a CUDA capture does); the CUDA-only
code is `side_stream` and `cuda_graph_replay`, and it has NOT been run on a GPU in this project yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch

log = logging.getLogger("chinfix.worker")

Capture = Literal["auto", "off"]
CAPTURE_MODES: tuple[str, ...] = ("auto", "off")

CAPTURE_WARMUP_STEPS = 3
"""Eager steps before the capture (PyTorch's recipe uses 3): Adam's moments exist and cuDNN has chosen its
algorithms by then, so the captured step allocates nothing the replays would miss."""

ProgressCallback = Callable[[int, int, torch.Tensor], None]
"""progress(step, total_steps, losses) after every step (1-based); losses: N float32 on the device, each
crop's loss at that step (reading it waits for the device)."""


def capture_warmup(device: torch.device, capture: Capture, steps: int) -> int | None:
    """How many steps to run eagerly before capturing one and replaying it, or None: run every step eagerly.

    Capture is for CUDA only; it pays when at least two replays follow the warm-up (the capture itself runs nothing)."""
    check_capture(capture)
    if capture == "off" or device.type != "cuda" or steps < CAPTURE_WARMUP_STEPS + 2:
        return None
    return CAPTURE_WARMUP_STEPS


def check_capture(capture: str) -> None:
    if capture not in CAPTURE_MODES:
        raise ValueError(f"capture must be one of {CAPTURE_MODES}, got {capture!r}")


def step_counter(device: torch.device) -> torch.Tensor:
    """The device step counter: a 1-element int64 tensor, 0 before the first step."""
    return torch.zeros(1, dtype=torch.int64, device=device)


def at_step(schedule: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Row `counter` of a steps x ... device schedule, without the step dimension (read on the device)."""
    return schedule.index_select(0, counter).squeeze(0)


def record_loss(losses: torch.Tensor, counter: torch.Tensor, loss: torch.Tensor) -> None:
    """Write a step's N losses into row `counter` of the steps x N buffer, then advance the counter (on the device)."""
    losses.index_copy_(0, counter, loss.detach().reshape(1, -1).to(losses.dtype))
    counter.add_(1)


def set_gradients(loss: torch.Tensor, parameters: Sequence[torch.Tensor]) -> None:
    """The gradients of `loss` for `parameters` only, as their `.grad`: the generator's and VGG's parameters are shared
    with other jobs and stay untouched."""
    gradients = torch.autograd.grad(loss, list(parameters))
    for parameter, gradient in zip(parameters, gradients, strict=True):
        parameter.grad = gradient


def run_steps(
    step: Callable[[], None], losses: torch.Tensor, progress: ProgressCallback | None, capture: Capture
) -> None:
    """Run `losses.shape[0]` steps: eagerly, or (CUDA, `capture_warmup`) the warm-up eagerly and the rest as replays
    of one captured step, all on a side stream. progress(step, total, losses[step - 1]) after each."""
    warmup = capture_warmup(losses.device, capture, losses.shape[0])
    if warmup is None:
        run_with_capture(step, losses, progress, losses.shape[0], capture_step=None)
        return
    with side_stream(losses.device):
        run_with_capture(step, losses, progress, warmup, capture_step=cuda_graph_replay)


def run_with_capture(
    step: Callable[[], None],
    losses: torch.Tensor,
    progress: ProgressCallback | None,
    warmup: int,
    capture_step: Callable[[Callable[[], None]], Callable[[], None]] | None,
) -> None:
    """`warmup` eager steps, then `capture_step(step)` (which records one step without running it and returns its
    replay) replayed for the remaining steps. If the capture raises, the remaining steps run eagerly: nothing was run
    by the failed capture and every input sits at the device counter, so the numbers are the same."""
    total = losses.shape[0]
    for index in range(min(warmup, total)):
        step()
        _report(progress, index, losses)
    replay = step
    if capture_step is not None and warmup < total:
        try:
            replay = capture_step(step)
        except Exception:
            log.warning("capturing the optimisation step failed; the remaining steps run eagerly", exc_info=True)
    for index in range(warmup, total):
        replay()
        _report(progress, index, losses)


def _report(progress: ProgressCallback | None, index: int, losses: torch.Tensor) -> None:
    if progress is not None:
        progress(index + 1, losses.shape[0], losses[index])


@contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """CUDA: run the block on a new stream, ordered after the work already queued and before the work queued after
    it. Warm-up and capture share it: cuBLAS keeps a handle per stream, and warming up on the capture stream makes
    it before the capture."""
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


def cuda_graph_replay(step: Callable[[], None]) -> Callable[[], None]:
    """CUDA: record one call of `step` on the current stream as a CUDA graph (running nothing); its replay."""
    graph = torch.cuda.CUDAGraph()
    # thread_local: other job threads may allocate on the GPU while this one captures
    with torch.cuda.graph(graph, stream=torch.cuda.current_stream(), capture_error_mode="thread_local"):
        step()
    return graph.replay
