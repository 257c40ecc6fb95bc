"""Errors that carry a contract error code and a sentence a photo app can show."""

from __future__ import annotations

from typing import Any

from chinfix.contract import ErrorCode


class ChinfixError(Exception):
    """Base: a known failure with a code from the contract and a human sentence."""

    report: dict[str, Any] | None = None
    """What the job found out before it failed, kept in the failed job's record (None: nothing worth keeping)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PipelineError(ChinfixError):
    """A job cannot be done for a reason the client should hear (no face, model missing, ...)."""


class LowQualityError(PipelineError):
    """An edit failed the quality gate under CHINFIX_QUALITY_POLICY=fail; the report says by how much."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(ErrorCode.LOW_QUALITY, message)
        self.report = report


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
