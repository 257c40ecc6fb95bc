"""Pieces of the OpenAPI document FastAPI cannot derive itself: the multipart body, the error answers, links."""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorEnvelope
from chinfix.contract import EditOptions, ErrorCode

ERROR_DESCRIPTIONS = {
    400: "empty_upload: the file is empty",
    401: "unauthorized: no or wrong API key",
    404: "job_not_found (or not_found): unknown, deleted, expired, or another tenant's job",
    409: "job_not_finished, job_failed, job_running or variant_unavailable: not possible in the job's state",
    413: "upload_too_large or image_too_large",
    415: "unsupported_format: not JPEG, PNG, WebP or HEIC",
    422: "invalid_options, invalid_callback_url, idempotency_conflict, image_too_small or image_unreadable",
    429: "rate_limited or quota_exceeded; retry after Retry-After seconds",
    503: "queue_full or service_unavailable; retry after Retry-After seconds",
}
PATCH_OFFSET_HEADER = {
    "Chinfix-Patch-Offset": {
        "description": "return=patch only: `left,top`, where the patch's top-left corner goes in the photo",
        "schema": {"type": "string", "pattern": "^[0-9]+,[0-9]+$"},
    }
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
        "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP or HEIC photo"},
        "code": {
            "type": "string",
            "format": "binary",
            "description": "optional: the face's latent code (.npy, 1 x num_ws x w_dim or 1 x w_dim float32); "
            "skips the inversion",
        },
    }
    properties.update(inline_refs(options["properties"], options.get("$defs", {})))
    properties["callback_url"] = {
        "type": "string",
        "format": "uri",
        "description": "POSTed the job view, signed with the tenant's webhook secret, when the job ends",
    }
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
                    "encoding": {"image": {"contentType": "image/jpeg, image/png, image/webp, image/heic"}},
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


def variant_request_schema(fields: tuple[str, ...]) -> dict[str, Any]:
    """The form body of POST /jobs/{id}/variants: the options a variant may change, all optional."""
    options = EditOptions.model_json_schema(by_alias=True)
    definitions = options.get("$defs", {})
    properties = {name: inline_refs(options["properties"][name], definitions) for name in fields}
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return {
        "requestBody": {
            "required": False,
            "content": {"application/x-www-form-urlencoded": {"schema": schema}, "multipart/form-data": {"schema": schema}},
        }
    }


def idempotency_parameter() -> dict[str, Any]:
    """The Idempotency-Key header of the submitting operations (app.idempotency)."""
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "a retry with the same key and request answers the job the first try created; the same key "
        f"on another request is 422 {ErrorCode.IDEMPOTENCY_CONFLICT}",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    }
