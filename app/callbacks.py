"""Webhook delivery, run by `chinfix callbacks` (an RQ worker on the callbacks queue; no torch).

One attempt per RQ job: POST the job view, record the outcome on the job, and on a non-2xx answer, a timeout or
a refused address queue the next attempt after the next backoff delay (RQ's scheduler holds it until then).
Each attempt connects to the address it checked (`check_callback_url`), not to the host's name again.
"""

from __future__ import annotations

import http.client
import logging
import socket
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

from rq import get_current_job

from app.auth import Tenant
from app.routes import job_view
from chinfix.callbacks import (
    JOB_ID_HEADER,
    SIGNATURE_HEADER,
    CallbackRefused,
    check_callback_url,
    queue_delivery,
    retry_delays,
    signature_header,
)
from chinfix.jobs import JobStore
from chinfix.settings import Settings

log = logging.getLogger("chinfix.callbacks")


def deliver_callback(job_id: str, attempt: int) -> None:
    settings = Settings()
    connection = get_current_job().connection
    store = JobStore.from_settings(settings, connection)
    record = store.get(job_id)
    if record is None or not record.callback_url:
        return
    secret = webhook_secret_of_owner(settings, record.owner)
    body = job_view(record, record.callback_base_url or settings.public_url or "").model_dump_json().encode()
    status, error = None, None
    if secret is None:
        error = "no webhook secret is configured for this job's tenant"
    else:
        status, error = post_signed(record.callback_url, body, job_id, secret, settings)
    delivered = status is not None and 200 <= status < 300
    callback = {
        "attempts": attempt,
        "last_status": status,
        "last_error": error,
        "delivered_at": datetime.now(tz=UTC).isoformat() if delivered else None,
    }
    delays = retry_delays(settings.callback_retry_base_seconds, settings.callback_retry_window_seconds)
    if not delivered and secret is not None and attempt <= len(delays):
        callback["next_attempt_in_s"] = delays[attempt - 1]
        queue_delivery(connection, settings, job_id, attempt + 1, delays[attempt - 1])
    store.record_callback_attempt(job_id, callback)
    log.info("callback of job %s, attempt %d: %s", job_id, attempt, status or error)


def webhook_secret_of_owner(settings: Settings, owner: str | None) -> str | None:
    """The webhook secret of the tenant whose owner hash the job record holds (records never store a tenant's
    id, so the configured tenants are hashed and compared)."""
    names = (pair.get_secret_value().partition(":")[0] for pair in settings.webhook_secrets)
    tenant_id = next((name for name in names if Tenant(name).owner == owner), None)
    return settings.webhook_secret(tenant_id) if tenant_id is not None else None


def post_signed(url: str, body: bytes, job_id: str, secret: str, settings: Settings) -> tuple[int | None, str | None]:
    """(HTTP status or None, why there is none)."""
    try:
        address = check_callback_url(url, settings.callback_allow)
    except CallbackRefused as refused:
        return None, refused.message
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "chinfix-webhooks",
        JOB_ID_HEADER: job_id,
        SIGNATURE_HEADER: signature_header(secret, int(time.time()), body),
    }
    try:
        return post_to_address(url, address, body, headers, settings.callback_timeout_seconds), None
    except (OSError, http.client.HTTPException) as failure:
        return None, str(failure) or type(failure).__name__


def post_to_address(url: str, address: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST `body` to `url` over a connection to `address` (the one `check_callback_url` checked), not to a fresh
    resolution of the URL's host; the Host header, TLS SNI and the certificate check keep the host's name. A redirect
    is not followed (its target was never checked): its 3xx status is the answer. Returns the HTTP status."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout_s)
    # http.client opens its socket through this hook, with (host, port): the checked address takes the host's place.
    connection._create_connection = lambda host_port, *rest: socket.create_connection((address, host_port[1]), *rest)
    try:
        target = parts.path or "/"
        connection.request("POST", f"{target}?{parts.query}" if parts.query else target, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()
