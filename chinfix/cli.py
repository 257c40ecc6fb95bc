"""The `chinfix` command line: one subcommand per module in `chinfix.commands`.

Each command module exposes `register(subparsers)` and imports anything heavy (torch, cv2)
inside its handler, so `chinfix serve` starts without the GPU stack installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "chinfix.commands.serve",
    "chinfix.commands.worker",
    "chinfix.commands.up",
    "chinfix.commands.models",
    "chinfix.commands.invert",
    "chinfix.commands.edit_code",
    "chinfix.commands.edit",
    "chinfix.commands.align",
    "chinfix.commands.mask",
    "chinfix.commands.bench",
    "chinfix.commands.train",
    "chinfix.commands.eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chinfix", description="Double-chin removal service.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
