"""Who is calling: bearer keys resolve to a `Tenant`; every job route depends on `current_tenant`.

A tenant is the unit of ownership and limits: a job is visible only to the tenant whose key created it, and
rate limits and quotas count per tenant. With no keys configured the API is open and every caller is the one
anonymous tenant.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ApiError
from chinfix.contract import ErrorCode
from chinfix.settings import ApiKey, Settings

ANONYMOUS_TENANT_ID = "anonymous"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key from CHINFIX_API_KEYS; not needed when the API runs open (no keys configured).",
)


@dataclass(frozen=True)
class Tenant:
    """The customer a request acts for. Its id comes from CHINFIX_API_KEYS (`tenant:key`)."""

    id: str

    @property
    def owner(self) -> str:
        """What job records store to name their tenant: a hash of the id, never a key."""
        return hashlib.sha256(f"chinfix-tenant:{self.id}".encode()).hexdigest()[:32]


ANONYMOUS = Tenant(ANONYMOUS_TENANT_ID)


def tenant_for_key(api_keys: tuple[ApiKey, ...], presented: str) -> Tenant | None:
    """The tenant holding `presented`, comparing against every key without stopping early, so timing reveals
    neither which key matched nor how much of one."""
    presented_bytes = presented.encode()
    found: Tenant | None = None
    for api_key in api_keys:
        if hmac.compare_digest(presented_bytes, api_key.key.get_secret_value().encode()):
            found = Tenant(api_key.tenant)
    return found


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        ErrorCode.UNAUTHORIZED,
        "A valid API key is required: send 'Authorization: Bearer <key>'.",
        headers={"WWW-Authenticate": "Bearer"},
    )


def current_tenant(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
) -> Tenant:
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return ANONYMOUS
    tenant = tenant_for_key(settings.api_keys, credentials.credentials.strip()) if credentials else None
    if tenant is None:
        raise _unauthorized()
    return tenant


def presents_operator_key(request: Request) -> bool:
    """True when the request carries CHINFIX_METRICS_KEY, or when no such key is configured and the API is open
    (local use: there is nothing to present)."""
    settings: Settings = request.app.state.settings
    if settings.metrics_key is None:
        return not settings.api_keys
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_key.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected)


def require_metrics_key(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if settings.metrics_key is not None and not presents_operator_key(request):
        raise _unauthorized()
