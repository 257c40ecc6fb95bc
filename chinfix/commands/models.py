"""`chinfix models list|pull|verify|convert`: the model store from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, download, verify and convert model weights")
    store_options = argparse.ArgumentParser(add_help=False)
    store_options.add_argument(
        "--model-dir", type=Path, default=None, help="model directory (default: CHINFIX_MODEL_DIR, else model_store/)"
    )
    actions = parser.add_subparsers(dest="models_action", required=True, metavar="ACTION")

    actions.add_parser(
        "list", parents=[store_options], help="table of every model: stage, present, verified, size, licence"
    ).set_defaults(func=list_models)

    pull = actions.add_parser(
        "pull", parents=[store_options], help="download models (all by default), resuming partial downloads"
    )
    pull.add_argument("names", nargs="*", metavar="NAME", help="model names from `chinfix models list`")
    pull.add_argument("--no-progress", action="store_true", help="no progress bar")
    pull.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a server before giving up")
    pull.set_defaults(func=pull_models)

    verify = actions.add_parser("verify", parents=[store_options], help="re-hash present models against the manifest")
    verify.add_argument("names", nargs="*", metavar="NAME")
    verify.set_defaults(func=verify_models)

    convert = actions.add_parser(
        "convert", help="rewrite a StyleGAN2 checkpoint (NVIDIA .pkl/.pt/.safetensors, rosinality .pt) as canonical .safetensors"
    )
    convert.add_argument("source", type=Path)
    convert.add_argument("destination", type=Path, help="a .safetensors path")
    convert.set_defaults(func=convert_checkpoint)


def _store(args: argparse.Namespace):
    from chinfix.settings import Settings
    from model_store.store import ModelStore

    return ModelStore(args.model_dir or Settings().model_dir)


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e6:,.1f} MB" if size >= 1e6 else f"{size / 1e3:,.1f} kB"


def list_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from chinfix.terminal import console

    store = _store(args)
    results = store.verify()
    table = Table(title=f"models in {store.root}")
    for column in ("name", "stage", "present", "verified", "size"):
        table.add_column(column, no_wrap=column != "stage")
    table.add_column("licence")
    for name, result in results.items():
        entry = store.entry(name)
        present = result.status != "missing"
        table.add_row(
            name,
            entry.stage,
            ("yes (pip package)" if entry.packaged else "yes") if present else "no",
            result.status.value if present else "-",
            _human_size(result.size if present else entry.size),
            entry.license,
        )
    console().print(table)
    return 0


def pull_models(args: argparse.Namespace) -> int:
    from chinfix.errors import PipelineError
    from model_store.store import ModelStoreError

    store = _store(args)
    failures = 0
    for name in args.names or store.names:
        try:
            path = store.pull([name], progress=not args.no_progress, connect_timeout=args.timeout)[name]
        except (ModelStoreError, PipelineError) as error:
            print(error, file=sys.stderr)
            failures += 1
            continue
        entry = store.entry(name)
        origin = f" (comes with the {entry.package} pip package)" if entry.packaged else ""
        print(f"{name}: {path}{origin}")
    return 1 if failures else 0


def verify_models(args: argparse.Namespace) -> int:
    from model_store.store import ModelStoreError, VerifyStatus

    store = _store(args)
    try:
        results = store.verify(args.names or None)
    except ModelStoreError as error:
        print(error, file=sys.stderr)
        return 1
    for name, result in results.items():
        print(f"{name:<22} {result.status.value:<10} {result.sha256 or ''}")
    return 1 if any(result.status == VerifyStatus.MISMATCH for result in results.values()) else 0


def convert_checkpoint(args: argparse.Namespace) -> int:
    from model_store.store import sha256_of_file
    from worker.models.checkpoints import CheckpointError, convert_generator_checkpoint

    try:
        checkpoint = convert_generator_checkpoint(args.source, args.destination)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"cannot convert {args.source}: {error}", file=sys.stderr)
        return 1
    architecture = checkpoint.architecture
    print(f"read {args.source} as {checkpoint.format}: {architecture.img_resolution}px, "
          f"{architecture.num_ws}x{architecture.w_dim} W+, channels {list(architecture.block_channels)}")
    print(f"wrote {args.destination} ({_human_size(args.destination.stat().st_size)}, "
          f"sha256 {sha256_of_file(args.destination)})")
    return 0
