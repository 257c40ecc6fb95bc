"""`chinfix edit-code code.npy --strength 1 -o edited.npy`: move a W+ code across the fine chin boundary."""

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
    parser.add_argument("--boundary", type=Path, help="fine boundary .npy (default: fine_boundary from the model store)")
    parser.add_argument("--intercept", type=Path, help="its intercepts .npy (default: fine_intercept from the store)")
    parser.add_argument("--margin", type=float, help="full-strength target score, on the negative side (default: settings)")
    parser.add_argument("--threshold", type=float, help="codes scoring below this are left alone (default: settings)")
    parser.add_argument("--fixed-alpha", type=float, help="edit by strength * this alpha (the seed used -5) instead of adaptively")
    parser.add_argument("--keep-from", type=int, default=7, help="layers from this one on are kept from the input (default 7)")
    parser.add_argument("--condition-pose", action="store_true", help="remove the yaw component from the edit direction")
    parser.add_argument("--pose-boundary", type=Path, help="yaw boundary .npy (default: pose_yaw_boundary from the store)")
    parser.add_argument("--json", action="store_true", help="print only the scores, alpha and whether the edit was skipped, as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from chinfix.errors import ChinfixError
    from chinfix.settings import Settings
    from model_store.store import ModelStore
    from worker.pipeline.edit import EditConfig, load_fine_boundary, load_pose_normal, remove_double_chin

    settings = Settings()
    store = ModelStore(settings.model_dir)
    try:
        boundary = load_fine_boundary(
            args.boundary or store.require("fine_boundary"), args.intercept or store.require("fine_intercept")
        )
        pose_normal = None
        if args.condition_pose or args.pose_boundary:
            pose_normal = load_pose_normal(args.pose_boundary or store.require("pose_yaw_boundary"))
    except ChinfixError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2

    wp = np.load(args.code, allow_pickle=False).astype(np.float32)
    wp = wp.reshape((1, *wp.shape)) if wp.ndim == 2 else wp
    try:
        config = EditConfig(
            strength=args.strength,
            margin=settings.edit_margin if args.margin is None else args.margin,
            no_chin_threshold=settings.no_chin_threshold if args.threshold is None else args.threshold,
            fixed_alpha=settings.fixed_alpha if args.fixed_alpha is None else args.fixed_alpha,
            keep_layers=tuple(range(args.keep_from, boundary.num_ws)),
        )
        result = remove_double_chin(wp, boundary, config, pose_normal=pose_normal)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

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
    else:
        print(
            f"score {result.score_before:.3f} -> {result.score_after:.3f} (alpha {result.alpha:.3f}); wrote {args.output}"
        )
    return 0
