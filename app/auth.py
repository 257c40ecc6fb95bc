"""Bearer-key access. With no keys configured the API is open (meant for local use).

A key configured as `tenant:key` belongs to that tenant (a bare key to tenant `default`); the job routes
receive the tenant's id, which scopes idempotency keys and webhook secrets. With no keys every caller is the
one `anonymous` tenant.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import ApiError
from chinfix.contract import ErrorCode


ANONYMOUS_TENANT = "anonymous"
DEFAULT_TENANT = "default"


def require_api_key(request: Request) -> str:
    """The id of the tenant whose key the request carries."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return ANONYMOUS_TENANT
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented_bytes = presented.strip().encode()
    # Compare against every key, without stopping early, so timing reveals neither which key nor how much matched.
    matched = None
    for entry in keys:
        tenant, separator, key = entry.get_secret_value().partition(":")
        if not separator:
            tenant, key = DEFAULT_TENANT, tenant
        if hmac.compare_digest(presented_bytes, key.encode()):
            matched = tenant
    if scheme.lower() != "bearer" or matched is None:
        raise ApiError(
            401,
            ErrorCode.UNAUTHORIZED,
            "A valid API key is required: send 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return matched
