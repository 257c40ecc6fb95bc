"""The one place loaded models live: built once when a worker starts, read by every job it runs."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError
from chinfix.settings import Settings
from model_store.store import ModelStore

log = logging.getLogger("chinfix.worker")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def import_function(path: str) -> Callable[..., Any]:
    """'package.module:function' → the function."""
    module_name, _, function_name = path.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


@dataclass
class ModelRegistry:
    settings: Settings
    device: torch.device
    store: ModelStore
    edit_portrait: Callable[..., Any]
    models: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def require(self, *names: str) -> list[Any]:
        """The loaded models of these names, or a model_missing error naming every absent one."""
        absent = [name for name in names if name not in self.models]
        if absent:
            raise PipelineError(
                ErrorCode.MODEL_MISSING,
                f"This worker lacks the model(s) {', '.join(absent)}. "
                f"An operator must run `chinfix models pull {' '.join(absent)}` on the worker's machine.",
            )
        return [self.models[name] for name in names]

    def optional(self, name: str) -> Any | None:
        return self.models.get(name)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "missing_models": list(self.missing), "loaded": sorted(self.models)}


_active: ModelRegistry | None = None


def activate(registry: ModelRegistry) -> None:
    global _active
    _active = registry


def active_registry() -> ModelRegistry:
    if _active is None:
        raise RuntimeError("no model registry is active: jobs run inside `chinfix worker`")
    return _active
