"""Argument types and error output that several commands share."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chinfix.contract import ErrorCode, OutputFormat

IMAGE_SUFFIXES = {
    ".png": OutputFormat.PNG, ".jpg": OutputFormat.JPEG, ".jpeg": OutputFormat.JPEG, ".webp": OutputFormat.WEBP,
    ".heic": OutputFormat.HEIC,
}


def image_output_path(text: str) -> Path:
    """An argparse type: a file name whose suffix says how to encode the image."""
    path = Path(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"the image's file name must end in one of {', '.join(IMAGE_SUFFIXES)}")
    return path


def output_format_of(path: Path) -> OutputFormat:
    return IMAGE_SUFFIXES[path.suffix.lower()]


def face_choice(text: str) -> str | int:
    """An argparse type: 'largest' or a face index counted left to right."""
    if text == "largest":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'largest' or a face index 0, 1, ... (left to right), not {text!r}")


def face_choice_or_all(text: str) -> str | int:
    """An argparse type: 'all' (every face), 'largest' or a face index counted left to right."""
    return text if text == "all" else face_choice(text)


def print_error_body(code: ErrorCode | str, message: str) -> int:
    """Print the service's error body on stdout, for scripts; the command's exit status is 2."""
    print(json.dumps({"error": {"code": code, "message": message}}))
    return 2
