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
from worker.models.stylegan2 import NVIDIA_FP16_RESOLUTIONS
from worker.pipeline.invert import project
from worker.pipeline.refine import refine_diffuse_crop
from worker.training.directory import TrainingError

log = logging.getLogger("chinfix.worker")

GENERATOR = "stylegan2_ffhq"
FINE_BOUNDARY = ("fine_boundary", "fine_intercept")
PERCEPTUAL = ("vgg16_imagenet", "lpips_vgg_lin")
DIFFUSE_PERCEPTUAL = "vgg16_perceptual"
FACE_PARSING = "face_parsing_bisenet"
POSE_BOUNDARY = "pose_yaw_boundary"
FACE_RECOGNITION = "dlib_face_recognition"
DOUBLE_CHIN_CLASSIFIER = "double_chin_classifier"
LANDMARK_MODELS = {"dlib": ("dlib_landmarks",), "fan": ("fan_landmarks", "fan_face_detector")}


class ConfigurationError(Exception):
    """The worker's settings cannot work (a configured file is absent, a boundary does not fit the generator):
    it refuses to start, with this sentence."""


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when a GPU is visible, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_cuda_math(device: torch.device, tf32: bool = True) -> None:
    """How production runs on CUDA: cuDNN autotuning (the optimisation loops run the same convolutions every
    step, so the tuning pays once) and, unless `tf32` is off, TF32 tensor cores for float32 convolutions and
    matmuls. No-op on CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def generator_precision(precision: str, device: torch.device) -> tuple[int, bool]:
    """(fp16 resolutions, channels-last) for the generator: fp16 is NVIDIA's config-f setting (the 4 highest
    resolutions, channels-last) on CUDA; CPUs have no fast float16 convolutions, so they stay float32."""
    if precision == "fp16" and device.type == "cuda":
        return NVIDIA_FP16_RESOLUTIONS, True
    if precision == "fp16":
        log.warning("CHINFIX_PRECISION=fp16 needs CUDA; the generator runs in float32 on %s", device)
    return 0, False


def import_function(path: str) -> Callable[..., Any]:
    """'package.module:function' → the function."""
    module_name, _, function_name = path.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


@dataclass
class ModelRegistry:
    """Every model a worker uses, loaded once. A model whose files are absent is None and named in `missing`.

    The face parser is optional (the pipeline falls back to a landmark neck mask), and so is the double-chin
    classifier (without it the report's image-space double-chin probability is null); the pose boundary is loaded,
    and required, only with CHINFIX_CONDITION_POSE (off, as in the seed); everything else is required for an edit.
    """

    settings: Settings
    device: torch.device
    store: ModelStore
    edit_portrait: Callable[..., Any]
    generator: torch.nn.Module | None = None
    w_stats: Any | None = None
    """The projector's w_avg and w_std of the generator (`worker.pipeline.invert.WStatistics`), computed once."""
    fine_boundary: Any | None = None
    perceptual: torch.nn.Module | None = None
    diffuse_perceptual: torch.nn.Module | None = None
    """The seed's VGG16 relu4_3 features, the diffuse refinement's perceptual term."""
    landmarker: Any | None = None
    face_parser: torch.nn.Module | None = None
    pose_normal: np.ndarray | None = None
    inverter: Callable[..., Any] = project
    """`project`, or a `worker.batcher.BatchingInverter` that shares GPU batches with concurrent jobs."""
    diffuser: Callable[..., Any] = refine_diffuse_crop
    """`refine_diffuse_crop`, or a `worker.batcher.BatchingDiffuser` that shares GPU batches with concurrent jobs."""
    face_describer: Any | None = None
    double_chin_classifier: torch.nn.Module | None = None
    """The seed's ResNeXt double-chin classifier (`worker.training.classifier`), for the quality facts."""
    missing: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    """Models whose files are present but failed to load, with the loader's reason (also in the missing lists)."""

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        registry = cls(
            settings=settings,
            device=resolve_device(settings.device),
            store=ModelStore(settings.model_dir),
            edit_portrait=import_function(settings.pipeline),
        )
        configure_cuda_math(registry.device, settings.tf32)
        registry._load_all()
        return registry

    def _load_all(self) -> None:
        from worker.models.bisenet import load_bisenet
        from worker.models.checkpoints import load_generator
        from worker.models.face_identity import load_face_describer
        from worker.models.landmarks import load_landmarker
        from worker.models.lpips import load_lpips_vgg
        from worker.models.vgg16 import load_seed_perceptual_vgg16
        from worker.pipeline.edit import load_fine_boundary, load_pose_normal
        from worker.pipeline.invert import w_statistics
        from worker.training.classifier import load_classifier

        backend = self.settings.landmark_backend
        fp16_resolutions, channels_last = generator_precision(self.settings.precision, self.device)
        self.generator = self._load(
            (GENERATOR,),
            lambda path: load_generator(
                path, device=self.device, fp16_resolutions=fp16_resolutions, channels_last=channels_last
            ),
        )
        if self.generator is not None:
            self.w_stats = w_statistics(self.generator)
        if self.settings.fine_boundary is None:
            self.fine_boundary = self._load(FINE_BOUNDARY, load_fine_boundary)
        else:
            self.fine_boundary = load_configured_boundary(self.settings)
        if self.generator is not None and self.fine_boundary is not None:
            check_boundary_fits(self.fine_boundary.normals.shape, self.generator, self.settings)
        self.perceptual = self._load(PERCEPTUAL, lambda vgg, lin: load_lpips_vgg(vgg, lin, device=self.device))
        self.diffuse_perceptual = self._load(
            (DIFFUSE_PERCEPTUAL,), lambda path: load_seed_perceptual_vgg16(path, device=self.device)
        )
        self.landmarker = self._load(
            LANDMARK_MODELS[backend], lambda *paths: load_landmarker(backend, self.store, str(self.device))
        )
        self.face_parser = self._load((FACE_PARSING,), lambda path: load_bisenet(path, self.device), optional=True)
        if self.settings.condition_pose:
            self.pose_normal = self._load((POSE_BOUNDARY,), load_pose_normal)
        self.face_describer = self._load((FACE_RECOGNITION,), load_face_describer)
        self.double_chin_classifier = self._load(
            (DOUBLE_CHIN_CLASSIFIER,), lambda path: load_classifier(path, self.device), optional=True
        )

    def _load(self, names: tuple[str, ...], loader: Callable[..., Any], optional: bool = False) -> Any | None:
        absent = self.store.missing(list(names))
        if not absent:
            try:
                return loader(*(self.store.path(name) for name in names))
            except (ChinfixError, TrainingError, OSError, ValueError, RuntimeError, KeyError) as error:
                log.exception("could not load %s; treating it as missing", ", ".join(names))
                absent = list(names)
                self.unreadable.update({name: str(error) for name in names})
        (self.missing_optional if optional else self.missing).extend(absent)
        return None

    def require_complete(self) -> None:
        """Raise model_missing naming every absent required model; an edit needs them all."""
        if self.missing:
            names = " ".join(self.missing)
            unreadable = [name for name in self.missing if name in self.unreadable]
            # A present file is never downloaded again, so a corrupt one has to go first.
            remove_first = (
                f"delete the unreadable file(s) of {', '.join(unreadable)} (`chinfix models verify` checks them), then "
                if unreadable
                else ""
            )
            raise PipelineError(
                ErrorCode.MODEL_MISSING,
                f"The worker is missing the model(s) {', '.join(self.missing)}, so it cannot edit photos yet. "
                f"An operator must {remove_first}run `chinfix models pull {names}` on the worker's machine.",
            )

    def describe(self) -> dict[str, Any]:
        """For the heartbeat and /readyz."""
        return {
            "device": str(self.device),
            "missing_models": list(self.missing),
            "missing_optional_models": list(self.missing_optional),
            "unreadable_models": self.unreadable,
        }


def load_configured_boundary(settings: Settings) -> Any:
    """The fine boundary named by CHINFIX_FINE_BOUNDARY and CHINFIX_FINE_INTERCEPT (e.g. `chinfix train fine`'s)."""
    from worker.pipeline.edit import load_fine_boundary

    for variable, path in (("CHINFIX_FINE_BOUNDARY", settings.fine_boundary),
                           ("CHINFIX_FINE_INTERCEPT", settings.fine_intercept)):  # fmt: skip
        if not path.is_file():
            raise ConfigurationError(f"{variable}={path}: no such file")
    try:
        return load_fine_boundary(settings.fine_boundary, settings.fine_intercept)
    except (ValueError, OSError) as error:
        raise ConfigurationError(f"CHINFIX_FINE_BOUNDARY={settings.fine_boundary} cannot be used: {error}") from None


def check_boundary_fits(normals_shape: tuple[int, ...], generator: torch.nn.Module, settings: Settings) -> None:
    """A boundary is num_ws x w_dim of the generator it was trained on; another generator's cannot edit."""
    if tuple(normals_shape) != (generator.num_ws, generator.w_dim):
        source = settings.fine_boundary or "the model store's fine_boundary"
        raise ConfigurationError(
            f"the fine boundary ({source}) has {normals_shape[0]} layers of {normals_shape[1]}, but the generator "
            f"has {generator.num_ws} x {generator.w_dim}: use the boundary trained for this generator"
        )


_active: ModelRegistry | None = None


def activate(registry: ModelRegistry) -> None:
    """Make `registry` the one RQ jobs in this process use (set once, at worker start)."""
    global _active
    _active = registry


def active_registry() -> ModelRegistry:
    if _active is None:
        raise RuntimeError("no model registry is active: jobs run inside `chinfix worker`")
    return _active
