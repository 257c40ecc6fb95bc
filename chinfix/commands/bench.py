"""`chinfix bench TARGET [OPTIONS]`: speed and memory tables for one part of the pipeline or the API.

Each target is a module (`worker.bench.*`, or `app.bench` for the API) with `configure(parser)` and `run(args)`. Its options are
parsed only once the target is chosen, so building the CLI never imports the worker side: the API
image has no `worker` package.
"""

from __future__ import annotations

import argparse
import importlib

BENCH_TARGETS = {
    "generator": "worker.bench.generator",
    "align": "worker.bench.align",
    "invert": "worker.bench.invert",
    "pipeline": "worker.bench.pipeline",
    "throughput": "worker.bench.throughput",
    "pairs": "worker.bench.pairs",
    "identity": "worker.bench.identity",
    "api": "app.bench",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="print a benchmark table",
        description=f"Targets: {', '.join(BENCH_TARGETS)}. `chinfix bench TARGET --help` lists a target's options.",
    )
    parser.add_argument("target", choices=BENCH_TARGETS, metavar="TARGET", help=", ".join(BENCH_TARGETS))
    parser.add_argument("target_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def target_parser(name: str) -> argparse.ArgumentParser:
    """The options of one bench target: the shared ones, then the target module's own."""
    parser = argparse.ArgumentParser(prog=f"chinfix bench {name}")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per row")
    importlib.import_module(BENCH_TARGETS[name]).configure(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    target_args = target_parser(args.target).parse_args(args.target_args)
    return importlib.import_module(BENCH_TARGETS[args.target]).run(target_args)
