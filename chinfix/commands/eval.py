"""`chinfix eval PHOTOS_DIR -o REPORT_DIR`: the pipeline over a folder for every (refine, strength), as a report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from chinfix.commands.arguments import print_error_body
from chinfix.contract import ErrorCode, QualityPolicy, RefineMethod


def refine_list(text: str) -> list[RefineMethod]:
    """An argparse type: comma-separated refine methods."""
    try:
        return [RefineMethod(name.strip()) for name in text.split(",") if name.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected refine methods from {', '.join(method.value for method in RefineMethod)}, not {text!r}"
        ) from None


def strength_list(text: str) -> list[float]:
    """An argparse type: comma-separated strengths in 0..1."""
    try:
        strengths = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        strengths = []
    if not strengths or not all(0.0 <= strength <= 1.0 for strength in strengths):
        raise argparse.ArgumentTypeError(f"expected comma-separated strengths in 0..1, not {text!r}")
    return strengths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="edit every photo of a folder for each refine and strength; write index.html and metrics.csv",
        description="Runs the pipeline over PHOTOS_DIR for every combination of --refine and --strength and writes "
        "REPORT_DIR/index.html and REPORT_DIR/metrics.csv. Rows already in metrics.csv are skipped, so a stopped run "
        "resumes. The quality gate's verdict is reported but every edit is kept (CHINFIX_QUALITY_POLICY=report).",
    )
    parser.add_argument("photos_dir", type=Path, help="folder of JPEG, PNG or WebP photos")
    parser.add_argument("-o", "--output", type=Path, required=True, help="report folder (created)")
    parser.add_argument("--refine", type=refine_list, default=[RefineMethod.DIFFUSE], help="e.g. diffuse,warp (default diffuse)")
    parser.add_argument("--strength", type=strength_list, default=[1.0], help="e.g. 0.5,1 (default 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from chinfix.errors import ChinfixError
    from chinfix.imaging import ImageLimits
    from chinfix.settings import Settings
    from worker.evaluation import eval_cases, pending_cases, photos_in, run_case, write_index
    from worker.registry import ModelRegistry

    if not args.photos_dir.is_dir():
        return print_error_body(ErrorCode.INVALID_OPTIONS, f"{args.photos_dir} is not a folder")
    photos = photos_in(args.photos_dir)
    if not photos:
        return print_error_body(ErrorCode.INVALID_OPTIONS, f"{args.photos_dir} holds no .jpg, .jpeg, .png or .webp photo")
    # The report shows every edit with the gate's verdict beside it, whatever the deployment's policy.
    settings = Settings().model_copy(update={"quality_policy": QualityPolicy.REPORT})
    try:
        registry = ModelRegistry.load(settings)
        registry.require_complete()
    except ChinfixError as error:
        return print_error_body(error.code, error.message)
    cases = eval_cases(photos, args.refine, args.strength)
    pending = pending_cases(cases, args.output)
    limits = ImageLimits(settings.max_pixels, settings.min_side)

    def edit(photo, options):
        return registry.edit_portrait(photo, options, registry, lambda stage, fraction: None)

    started = time.perf_counter()
    with tqdm(pending, unit="edit") as bar:
        for case in bar:
            bar.set_description(case.key)
            run_case(case, edit, limits, args.output)
    seconds = time.perf_counter() - started
    if not pending:
        write_index(args.output)
    per_edit = f", {seconds / len(pending):.1f} s per edit" if pending else ""
    print(
        f"{len(pending)} edits in {seconds:.1f} s{per_edit}; {len(cases) - len(pending)} already in the report; "
        f"{args.output / 'index.html'}"
    )
    return 0
