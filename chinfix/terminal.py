"""Rich output for the command line."""

from __future__ import annotations

import shutil

from rich.console import Console

PIPED_WIDTH = 160
"""Rich lays tables out for 80 columns when stdout is not a terminal, which folds every cell of a
wide table; a pipe or a log file has no width, so give it a generous one."""


def console() -> Console:
    """A console as wide as the terminal, or PIPED_WIDTH columns when there is none."""
    return Console(width=shutil.get_terminal_size((PIPED_WIDTH, 24)).columns)
