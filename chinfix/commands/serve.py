"""`chinfix serve`: the HTTP API under uvicorn."""

from __future__ import annotations

import argparse
import sys

from chinfix.settings import Settings


def add_listen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: CHINFIX_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: CHINFIX_PORT or 8000)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {key: getattr(args, key) for key in ("host", "port") if getattr(args, key, None) is not None}
    return Settings(**overrides)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the HTTP API")
    add_listen_arguments(parser)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = settings_from_args(args)
    if not settings.api_keys and not settings.allow_open:
        print(
            "chinfix serve: refusing to start an open API: set CHINFIX_API_KEYS (tenant:key,...), "
            "or CHINFIX_ALLOW_OPEN=true to run without keys on purpose.",
            file=sys.stderr,
        )
        return 2
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        log_level="info",
        proxy_headers=True,
    )
    return 0
