"""The one place loaded models live: built once when a worker starts, read by every job it runs."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chinfix.contract import ErrorCode
from chinfix.errors import ChinfixError, PipelineError
from chinfix.settings import Settings
from model_store.store import ModelStore

log = logging.getLogger("chinfix.worker")

GENERATOR = "stylegan2_ffhq"
FINE_BOUNDARY = ("fine_boundary", "fine_intercept")
PERCEPTUAL = ("vgg16_imagenet", "lpips_vgg_lin")
FACE_PARSING = "face_parsing_bisenet"
POSE_BOUNDARY = "pose_yaw_boundary"
LANDMARK_MODELS = {"dlib": ("dlib_landmarks",), "fan": ("fan_landmarks", "fan_face_detector")}


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when a GPU is visible, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def import_function(path: str) -> Callable[..., Any]:
    """'package.module:function' → the function."""
    module_name, _, function_name = path.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


@dataclass
class ModelRegistry:
    """Every model a worker uses, loaded once. A model whose files are absent is None and named in `missing`.

    The face parser and the pose boundary are optional (the pipeline falls back to a landmark neck mask and
    plain editing); everything else is required for an edit.
    """

    settings: Settings
    device: torch.device
    store: ModelStore
    edit_portrait: Callable[..., Any]
    generator: torch.nn.Module | None = None
    fine_boundary: Any | None = None
    perceptual: torch.nn.Module | None = None
    landmarker: Any | None = None
    face_parser: torch.nn.Module | None = None
    pose_normal: np.ndarray | None = None
    missing: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        registry = cls(
            settings=settings,
            device=resolve_device(settings.device),
            store=ModelStore(settings.model_dir),
            edit_portrait=import_function(settings.pipeline),
        )
        registry._load_all()
        return registry

    def _load_all(self) -> None:
        from worker.models.bisenet import load_bisenet
        from worker.models.checkpoints import load_generator
        from worker.models.landmarks import load_landmarker
        from worker.models.lpips import load_lpips_vgg
        from worker.pipeline.edit import load_fine_boundary, load_pose_normal

        backend = self.settings.landmark_backend
        self.generator = self._load((GENERATOR,), lambda path: load_generator(path, device=self.device))
        self.fine_boundary = self._load(FINE_BOUNDARY, load_fine_boundary)
        self.perceptual = self._load(PERCEPTUAL, lambda vgg, lin: load_lpips_vgg(vgg, lin, device=self.device))
        self.landmarker = self._load(
            LANDMARK_MODELS[backend], lambda *paths: load_landmarker(backend, self.store, str(self.device))
        )
        self.face_parser = self._load((FACE_PARSING,), lambda path: load_bisenet(path, self.device), optional=True)
        self.pose_normal = self._load((POSE_BOUNDARY,), load_pose_normal, optional=True)

    def _load(self, names: tuple[str, ...], loader: Callable[..., Any], optional: bool = False) -> Any | None:
        absent = self.store.missing(list(names))
        if not absent:
            try:
                return loader(*(self.store.path(name) for name in names))
            except (ChinfixError, OSError, ValueError, RuntimeError, KeyError):
                log.exception("could not load %s; treating it as missing", ", ".join(names))
                absent = list(names)
        (self.missing_optional if optional else self.missing).extend(absent)
        return None

    def require_complete(self) -> None:
        """Raise model_missing naming every absent required model; an edit needs them all."""
        if self.missing:
            names = " ".join(self.missing)
            raise PipelineError(
                ErrorCode.MODEL_MISSING,
                f"The worker is missing the model(s) {', '.join(self.missing)}, so it cannot edit photos yet. "
                f"An operator must run `chinfix models pull {names}` on the worker's machine.",
            )

    def describe(self) -> dict[str, Any]:
        """For the heartbeat and /readyz."""
        return {"device": str(self.device), "missing_models": list(self.missing)}


_active: ModelRegistry | None = None


def activate(registry: ModelRegistry) -> None:
    """Make `registry` the one RQ jobs in this process use (set once, at worker start)."""
    global _active
    _active = registry


def active_registry() -> ModelRegistry:
    if _active is None:
        raise RuntimeError("no model registry is active: jobs run inside `chinfix worker`")
    return _active
