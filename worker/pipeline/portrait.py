"""The whole edit of one photo: align → invert → edit → refine → paste back.

`edit_portrait` is what the worker, `chinfix edit` and `chinfix bench pipeline` all call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EditResult:
    image: np.ndarray
    """HxWx3 uint8 RGB: the edited photo, or the edited aligned crop when the options ask for it."""
    report: dict[str, Any]
    """JSON-ready facts for the job record: faces, scores, alpha, mask source, per-stage milliseconds."""
    debug_images: dict[str, np.ndarray] = field(default_factory=dict)
    """Intermediate images by name (HxWx3 or HxW uint8), kept when the options ask for debug output."""
