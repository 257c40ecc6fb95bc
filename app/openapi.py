"""Pieces of the OpenAPI document FastAPI cannot derive itself: the multipart body, the error answers, links."""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorEnvelope
from chinfix.contract import EditOptions

ERROR_DESCRIPTIONS = {
    400: "empty_upload: the file is empty",
    401: "unauthorized: no or wrong API key",
    404: "job_not_found (or not_found): unknown, deleted, expired, or another tenant's job",
    409: "job_not_finished, job_failed or job_running: not possible in the job's state",
    413: "upload_too_large or image_too_large",
    415: "unsupported_format: not JPEG, PNG or WebP",
    422: "invalid_options, image_too_small or image_unreadable",
    429: "rate_limited or quota_exceeded; retry after Retry-After seconds",
    503: "queue_full or service_unavailable; retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entries of the error answers a route gives, all with the error envelope as body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        responses[status] = {"model": ErrorEnvelope, "description": ERROR_DESCRIPTIONS[status]}
        if status in (429, 503):
            responses[status]["headers"] = RETRY_AFTER
    return responses


def image_content(*media_types: str) -> dict[str, Any]:
    """The `content` of an answer that is an image file in one of `media_types`."""
    return {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in media_types}


def inline_refs(schema: Any, definitions: dict[str, Any]) -> Any:
    """`schema` with every `#/$defs/X` reference replaced by the definition itself: pydantic puts enums in
    `$defs`, which a schema embedded in an operation cannot point to."""
    if isinstance(schema, dict):
        reference = schema.get("$ref", "")
        if reference.startswith("#/$defs/"):
            return inline_refs(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: inline_refs(value, definitions) for key, value in schema.items()}
    if isinstance(schema, list):
        return [inline_refs(item, definitions) for item in schema]
    return schema


def edit_request_schema() -> dict[str, Any]:
    """The multipart body of POST /edit: the image file and the options as form fields."""
    options = EditOptions.model_json_schema(by_alias=True)
    properties: dict[str, Any] = {
        "image": {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP photo"},
        "code": {
            "type": "string",
            "format": "binary",
            "description": "optional: the face's latent code (.npy, 1 x num_ws x w_dim or 1 x w_dim float32); "
            "skips the inversion",
        },
    }
    properties.update(inline_refs(options["properties"], options.get("$defs", {})))
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": properties,
                        "additionalProperties": False,
                    },
                    "encoding": {"image": {"contentType": "image/jpeg, image/png, image/webp"}},
                }
            },
        }
    }


def job_links() -> dict[str, Any]:
    """OpenAPI links from an accepted job to the operations on it (clients and fuzzers follow them)."""
    job_id = {"job_id": "$response.body#/id"}
    return {
        operation: {"operationId": operation, "parameters": job_id}
        for operation in ("get_job", "get_result", "delete_job")
    }
