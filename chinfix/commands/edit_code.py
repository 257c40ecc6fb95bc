"""`chinfix edit-code code.npy --strength 1 -o edited.npy`: move a W+ code across a double-chin boundary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("edit-code", help="remove the double chin from a W+ code (.npy)")
    parser.add_argument("code", type=Path, help="W+ code, 1 x num_ws x w_dim (or num_ws x w_dim) .npy")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the edited 1 x num_ws x w_dim code")
    parser.add_argument("--strength", type=float, default=1.0, help="0..1, 0 leaves the code alone (default 1)")
    parser.add_argument(
        "--boundary",
        type=Path,
        help="boundary .npy: W+ (1 x num_ws x w_dim, one normal per layer) or W (1 x w_dim, moves every edited "
        "layer alike: the seed's coarse edit); default: fine_boundary from the model store",
    )
    parser.add_argument(
        "--intercept", type=Path, help="its intercepts .npy (default: fine_intercept from the store, for the store's boundary)"
    )
    parser.add_argument("--margin", type=float, help="full-strength target score, on the negative side (default: settings)")
    parser.add_argument("--threshold", type=float, help="codes scoring below this are left alone (default: settings)")
    parser.add_argument(
        "--fixed-alpha", type=float, help="edit by strength * this alpha (the seed used -5) instead of adaptively; needs no intercepts"
    )
    parser.add_argument("--allow-positive", action="store_true", help="accept a positive alpha (towards a double chin)")
    parser.add_argument("--keep-from", type=int, default=7, help="layers from this one on are kept from the input (default 7)")
    parser.add_argument(
        "--mix-ratio", type=float, default=1.0, help="kept layers = (1-r) * edited + r * input (default 1; the seed's coarse step: 0.8)"
    )
    parser.add_argument("--condition-pose", action="store_true", help="remove the yaw component from the edit direction")
    parser.add_argument("--pose-boundary", type=Path, help="yaw boundary .npy (default: pose_yaw_boundary from the store)")
    parser.add_argument("--json", action="store_true", help="print only the scores, alpha and whether the edit was skipped, as JSON")
    parser.set_defaults(func=run)


class BadInput(Exception):
    """A one-line reason the command cannot run."""


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from pydantic import ValidationError

    from chinfix.errors import ChinfixError, describe_validation_errors
    from chinfix.settings import Settings

    try:
        settings = Settings()
        result = _edit(args, settings)
    except ValidationError as error:
        return _fail(describe_validation_errors(error.errors()))
    except ChinfixError as error:
        return _fail(error.message)
    except BadInput as error:
        return _fail(str(error))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, result.wp)
    summary = {
        "score_before": result.score_before,
        "score_after": result.score_after,
        "alpha": result.alpha,
        "skipped": result.skipped,
    }
    if args.json:
        print(json.dumps(summary))
    elif result.skipped:
        print(f"no double chin detected (score {result.score_before:.3f}); wrote the code unchanged to {args.output}")
    elif result.score_before is None:
        print(f"moved by alpha {result.alpha:.3f} (the boundary has no intercepts, so no score); wrote {args.output}")
    else:
        print(f"score {result.score_before:.3f} -> {result.score_after:.3f} (alpha {result.alpha:.3f}); wrote {args.output}")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _read_array(path: Path, what: str):
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except OSError as error:
        raise BadInput(f"cannot read the {what} {path}: {error.strerror or error}") from None
    except ValueError:
        raise BadInput(f"the {what} {path} is not a plain .npy array") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise BadInput(f"the {what} {path} is not a numeric .npy array")
    if not np.isfinite(array).all():
        raise BadInput(f"the {what} {path} contains NaN or infinite values")
    return array


def _load(path: Path, loader):
    """`loader()`, with a file that cannot be read or is not a boundary turned into one line naming `path`."""
    try:
        return loader()
    except OSError as error:
        raise BadInput(f"cannot read {error.filename or path}: {error.strerror or error}") from None
    except ValueError as error:
        raise BadInput(f"bad boundary file ({path}): {error}") from None


def _edit(args: argparse.Namespace, settings):
    from dataclasses import replace

    import numpy as np

    from model_store.store import ModelStore
    from worker.pipeline.edit import EditConfig, load_fine_boundary, load_pose_normal, remove_double_chin

    wp = _read_array(args.code, "code").astype(np.float32)
    wp = wp.reshape((1, *wp.shape)) if wp.ndim == 2 else wp
    if wp.ndim != 3 or wp.shape[0] != 1:
        raise BadInput(f"the code {args.code} has shape {wp.shape}; expected 1 x num_ws x w_dim")
    num_ws, w_dim = wp.shape[1:]

    fixed_alpha = settings.fixed_alpha if args.fixed_alpha is None else args.fixed_alpha
    if fixed_alpha is not None and fixed_alpha > 0 and not args.allow_positive:
        raise BadInput(f"alpha {fixed_alpha:g} moves the code towards a double chin; add --allow-positive to do that on purpose")
    store = ModelStore(settings.model_dir)
    boundary_path = args.boundary or store.require("fine_boundary")
    intercept_path = args.intercept
    if intercept_path is None and args.boundary is None and (fixed_alpha is None or not store.missing(["fine_intercept"])):
        intercept_path = store.require("fine_intercept")

    pose_path = None
    if args.condition_pose or settings.condition_pose or args.pose_boundary:
        pose_path = args.pose_boundary or store.require("pose_yaw_boundary")
    boundary = _load(boundary_path, lambda: load_fine_boundary(boundary_path, intercept_path, num_ws))
    pose_normal = None if pose_path is None else _load(pose_path, lambda: load_pose_normal(pose_path))
    if boundary.normals.shape != (num_ws, w_dim):
        raise BadInput(
            f"the boundary {boundary_path} has {boundary.normals.shape} normals; the code wants {num_ws} x {w_dim} (or 1 x {w_dim})"
        )
    if fixed_alpha is None and boundary.intercepts is None:
        raise BadInput(f"the boundary {boundary_path} comes without --intercept: give its intercepts, or a --fixed-alpha")
    if not 0 < args.keep_from <= num_ws:
        raise BadInput(f"--keep-from must be 1..{num_ws} for a code of {num_ws} layers, got {args.keep_from}")

    if pose_normal is not None and pose_normal.shape != (w_dim,):
        raise BadInput(f"the pose boundary has {pose_normal.size} values; the code's w_dim is {w_dim}")
    try:
        config = replace(
            EditConfig.from_settings(settings, args.strength, tuple(range(args.keep_from, num_ws))),
            margin=settings.edit_margin if args.margin is None else args.margin,
            no_chin_threshold=settings.no_chin_threshold if args.threshold is None else args.threshold,
            fixed_alpha=fixed_alpha,
            mix_ratio=args.mix_ratio,
            allow_positive=args.allow_positive,
        )
        return remove_double_chin(wp, boundary, config, pose_normal=pose_normal)
    except ValueError as error:
        raise BadInput(str(error)) from None
