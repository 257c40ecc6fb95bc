"""Bearer-key access. With no keys configured the API is open (meant for local use)."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import ApiError
from chinfix.contract import ErrorCode


def require_api_key(request: Request) -> None:
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented_bytes = presented.strip().encode()
    # Compare against every key, without stopping early, so timing reveals neither which key nor how much matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_bytes, key.get_secret_value().encode())
    if scheme.lower() != "bearer" or not matched:
        raise ApiError(
            401,
            ErrorCode.UNAUTHORIZED,
            "A valid API key is required: send 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
