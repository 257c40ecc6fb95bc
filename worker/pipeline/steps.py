"""Running an optimisation loop's steps: eagerly, or on CUDA a few eagerly and then one step captured as a CUDA graph
and replayed for the rest.

A step, as the projector and the diffuse refinement build it, is a function of no arguments that reads every per-step
input (learning rate, exploration noise, where to write its loss) from device tensors at a device step counter, writes
its loss into row `counter` of a steps x N device buffer and then advances the counter on the device. Nothing in it
depends on a Python number that changes between steps, so a captured step, replayed, is step k at the k-th replay.

Capture (`CHINFIX_CAPTURE=auto`, CUDA only) follows PyTorch's recipe for whole-network capture: warm-up steps on a
side stream (they initialise Adam's state, let cuDNN autotune and autograd start its device threads; they are real
steps of the schedule), then one step captured on that same stream, then replays. If the capture raises, the rest of
the steps run eagerly and give the same numbers. The capture code has NOT been run on a GPU in this project yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
    of one captured step. progress(step, total, losses[step - 1]) after each."""
    total = losses.shape[0]
    warmup = capture_warmup(losses.device, capture, total)
    done = 0 if warmup is None else _run_captured(step, losses, progress, warmup)
    for index in range(done, total):
        step()
        _report(progress, index, losses)


def _report(progress: ProgressCallback | None, index: int, losses: torch.Tensor) -> None:
    if progress is not None:
        progress(index + 1, losses.shape[0], losses[index])


def _run_captured(
    step: Callable[[], None], losses: torch.Tensor, progress: ProgressCallback | None, warmup: int
) -> int:
    """CUDA: `warmup` eager steps and then replays of one captured step, all on one side stream (cuBLAS keeps a
    handle per stream: warming up on the capture stream creates it before the capture). Returns how many steps ran:
    all, or the warm-up's when the capture failed (the caller runs the rest eagerly)."""
    total = losses.shape[0]
    device = losses.device
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    done = warmup
    with torch.cuda.stream(stream):
        for index in range(warmup):
            step()
            _report(progress, index, losses)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other job threads may allocate on the GPU while this one captures
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                step()
        except Exception:
            log.warning("capturing the optimisation step failed; the remaining steps run eagerly", exc_info=True)
        else:
            for index in range(warmup, total):
                graph.replay()
                _report(progress, index, losses)
            done = total
    torch.cuda.current_stream(device).wait_stream(stream)
    return done
