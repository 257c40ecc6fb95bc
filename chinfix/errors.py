"""Errors that carry a contract error code and a sentence a photo app can show."""

from __future__ import annotations

from chinfix.contract import ErrorCode


class ChinfixError(Exception):
    """Base: a known failure with a code from the contract and a human sentence."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PipelineError(ChinfixError):
    """A job cannot be done for a reason the client should hear (no face, model missing, ...)."""


class ImageError(ChinfixError):
    """An upload is not an image we accept; `http_status` is the status the API answers with."""

    def __init__(self, code: ErrorCode, message: str, http_status: int) -> None:
        super().__init__(code, message)
        self.http_status = http_status


def describe_validation_errors(errors: list[dict]) -> str:
    """One sentence naming each bad field, e.g. "refine: Input should be 'diffuse', 'warp' or 'none'"."""
    parts = []
    for item in errors:
        location = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        parts.append(f"{location or 'request'}: {item.get('msg', 'invalid')}")
    return "Invalid request. " + "; ".join(parts)
