"""Pipelines that the service tests put in place of the real one, to exercise the plumbing alone.

They honour the same contract as `worker.pipeline.portrait.edit_portrait`; none claims to remove a chin.
"""

from __future__ import annotations

import time

import numpy as np

from chinfix.contract import Stage
from worker.pipeline.portrait import EditResult
from worker.pipeline.quality import changed_area


def darken_lower_third(photo, options, registry, progress) -> EditResult:
    """Darkens the lower third of the photo: a visible, checkable change. Its quality report has only the facts
    a stub can know (the changed area); it measures no identity or neck fit."""
    for stage in Stage:
        progress(stage, 1.0)
    edited = photo.copy()
    lower = edited.shape[0] * 2 // 3
    edited[lower:] = (edited[lower:] // 2).astype(np.uint8)
    mask = np.zeros(photo.shape[:2], np.float32)
    mask[lower:] = 1.0
    quality = {"passed": True, "reasons": [], "changed_area": changed_area(photo, edited, mask)}
    report = {"faces_found": 1, "pipeline": "stub", "quality": quality}
    return EditResult(image=edited, report=report, debug_images={"soft_mask": edited[..., 0]})


def hang_in_invert(photo, options, registry, progress) -> EditResult:
    """Reports the invert stage, then sleeps: a job to kill the worker under."""
    progress(Stage.ALIGN, 1.0)
    progress(Stage.INVERT, 0.1)
    time.sleep(600)
    raise AssertionError("the test kills the worker long before this")


def slow_darken(photo, options, registry, progress) -> EditResult:
    """`darken_lower_third` after two seconds of reported progress: a job that is running when Redis drops."""
    for step in range(10):
        progress(Stage.INVERT, step / 10)
        time.sleep(0.2)
    return darken_lower_third(photo, options, registry, progress)
