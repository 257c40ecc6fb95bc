"""`chinfix callbacks`: delivers signed webhooks (an RQ worker on the callbacks queue, with RQ's scheduler for
the retries). Torch-free: run it beside the API, as many as you like."""

from __future__ import annotations

import argparse
import logging

from chinfix.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("callbacks", help="deliver job webhooks (callback_url), retrying with backoff")
    parser.add_argument("--burst", action="store_true", help="exit once nothing is queued")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rq import Queue, SimpleWorker

    from chinfix.jobs import connect_redis

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    connection = connect_redis(settings)
    queue = Queue(settings.callback_queue_name, connection=connection)
    # SimpleWorker: one delivery is a POST, not worth a fork.
    worker = SimpleWorker([queue], connection=connection)
    worker.work(burst=args.burst, with_scheduler=True, logging_level="INFO")
    return 0
