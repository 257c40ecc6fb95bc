"""`chinfix up`: Redis (embedded unless CHINFIX_REDIS_URL is set), the API, one worker and the webhook deliverer,
on this machine."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from chinfix.commands.serve import add_listen_arguments, settings_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run Redis, the API and a worker together (Ctrl-C stops all)")
    add_listen_arguments(parser)
    parser.set_defaults(func=up)


def up(args: argparse.Namespace) -> int:
    from chinfix.embedded_redis import EmbeddedRedis

    settings = settings_from_args(args)
    # A container runtime or service manager stops us with SIGTERM: clean up as for Ctrl-C, or the
    # embedded Redis and the children outlive us.
    signal.signal(signal.SIGTERM, _interrupt)
    embedded = None if settings.redis_url else EmbeddedRedis(settings.state_dir)
    redis_url = embedded.start() if embedded else settings.redis_url
    env = dict(os.environ, CHINFIX_REDIS_URL=redis_url, CHINFIX_HOST=settings.host, CHINFIX_PORT=str(settings.port))
    chinfix = [sys.executable, "-m", "chinfix.cli"]
    children = [
        subprocess.Popen([*chinfix, "serve"], env=env),
        subprocess.Popen([*chinfix, "worker"], env=env),
        subprocess.Popen([*chinfix, "callbacks"], env=env),
    ]
    print(f"chinfix: Redis at {redis_url}{' (embedded)' if embedded else ''}", flush=True)
    print(f"chinfix: API on http://{settings.host}:{settings.port}  (docs: /docs)", flush=True)
    if not settings.api_keys:
        print("chinfix: the API is OPEN (no CHINFIX_API_KEYS set): keep it on a private address.", flush=True)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("chinfix: a component exited; stopping the others.", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\nchinfix: stopping.", flush=True)
    finally:
        stop_children(children)
        if embedded:
            embedded.stop()
    return max((child.returncode or 0 for child in children), default=0)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_children(children: list[subprocess.Popen], grace_seconds: float = 20.0) -> None:
    """SIGINT first (the worker finishes its job, uvicorn drains), SIGKILL only after the grace period."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_seconds
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
