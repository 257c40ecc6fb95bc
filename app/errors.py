"""Every error the API answers is JSON `{"error": {"code", "message"}}` with the right status."""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from chinfix.contract import ErrorCode
from chinfix.errors import ImageError, describe_validation_errors

log = logging.getLogger("chinfix.api")

REDIS_RETRY_AFTER_S = 5


class ApiError(Exception):
    def __init__(self, status_code: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    return JSONResponse(
        status_code=status_code, content={"error": {"code": code, "message": message, **extra}}, headers=headers
    )


_STATUS_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 401: ErrorCode.UNAUTHORIZED}


ROUTABLE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> set[str]:
    """Every method some route serves on the request's path, OPTIONS included."""
    routes = request.app.router.routes
    return {"OPTIONS"} | {
        method
        for method in ROUTABLE_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status_code, error.code, error.message, error.headers)

    @app.exception_handler(ImageError)
    async def _image_error(_: Request, error: ImageError) -> JSONResponse:
        return error_response(error.http_status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, ErrorCode.INVALID_OPTIONS, describe_validation_errors(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            # Starlette names the methods of the first route on the path only; a path has several.
            allow = ", ".join(sorted(allowed_methods(request)))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            headers = {**(headers or {}), "Allow": allow}
        code = _STATUS_CODES.get(error.status_code, ErrorCode.INVALID_OPTIONS)
        message = f"{request.method} {request.url.path}: {error.detail}. See /docs for the API."
        return error_response(error.status_code, code, message, headers)

    @app.exception_handler(RedisError)
    async def _redis_error(_: Request, error: RedisError) -> JSONResponse:
        log.warning("Redis failed under a request: %s", error)
        return error_response(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            "The job store is unreachable right now; nothing was lost or queued. Try again shortly.",
            {"Retry-After": str(REDIS_RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        request_id = secrets.token_hex(8)
        log.exception("unhandled error, request id %s", request_id)
        return error_response(
            500,
            ErrorCode.INTERNAL_ERROR,
            f"Something went wrong on our side. Quote request id {request_id} if it happens again.",
            request_id=request_id,
        )
