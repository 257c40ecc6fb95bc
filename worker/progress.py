"""Job progress: stage fractions from the pipeline → one 0..1 number in the job record, throttled."""

from __future__ import annotations

import time
from collections.abc import Callable

from chinfix.contract import STAGE_ORDER, Stage

ProgressCallback = Callable[[Stage, float], None]
"""Called by the pipeline with the current stage and how far through that stage it is (0..1)."""

# Rough shares of a job's time per stage on a GPU (inversion and diffuse refinement dominate).
STAGE_WEIGHTS: dict[Stage, float] = {
    Stage.ALIGN: 0.05,
    Stage.INVERT: 0.55,
    Stage.EDIT: 0.02,
    Stage.REFINE: 0.33,
    Stage.COMPOSE: 0.05,
}


def overall_progress(stage: Stage, fraction: float) -> float:
    """Fraction of the whole job done when `stage` is `fraction` complete."""
    done = sum(STAGE_WEIGHTS[earlier] for earlier in STAGE_ORDER[: STAGE_ORDER.index(stage)])
    return min(1.0, done + STAGE_WEIGHTS[stage] * min(max(fraction, 0.0), 1.0))


class ThrottledProgress:
    """Forwards progress at most every `interval` seconds, but always on a change of stage.

    An optimiser on a GPU reports hundreds of steps a second; Redis needs a few updates a second at most.
    """

    def __init__(self, publish: Callable[[Stage, float], None], interval: float = 0.25) -> None:
        self.publish = publish
        self.interval = interval
        self.last_stage: Stage | None = None
        self.last_time = 0.0

    def __call__(self, stage: Stage, fraction: float) -> None:
        current = time.monotonic()
        if stage is self.last_stage and current - self.last_time < self.interval:
            return
        self.last_stage = stage
        self.last_time = current
        self.publish(stage, overall_progress(stage, fraction))
