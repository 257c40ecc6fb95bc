"""`chinfix worker`: one queue worker (loads the models once, runs jobs without forking)."""

from __future__ import annotations

import argparse
import logging

from chinfix.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run one queue worker")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worker.main import run_worker
    from worker.registry import ConfigurationError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_worker(Settings(), burst=args.burst)
    except ConfigurationError as error:
        print(f"chinfix worker: {error}")
        return 2
