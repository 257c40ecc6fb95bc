"""`chinfix bench TARGET`: speed and memory tables for one part of the pipeline."""

from __future__ import annotations

import argparse
import importlib

BENCH_TARGETS = {
    "generator": "worker.bench.generator",
    "align": "worker.bench.align",
    "invert": "worker.bench.invert",
    "pipeline": "worker.bench.pipeline",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="print a benchmark table")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, module_name in BENCH_TARGETS.items():
        target = targets.add_parser(name, help=f"benchmark the {name} stage")
        target.set_defaults(func=_runner(module_name))
        target.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
        target.add_argument("--repeats", type=int, default=5, help="timed repetitions per row")
        _bench_module(module_name).configure(target)


def _bench_module(module_name: str):
    return importlib.import_module(module_name)


def _runner(module_name: str):
    def run(args: argparse.Namespace) -> int:
        return _bench_module(module_name).run(args)

    return run
