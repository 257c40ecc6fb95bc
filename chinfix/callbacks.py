"""Signed webhooks: which addresses a callback may reach, how its body is signed, and when it is (re)tried.

Torch-free. A job that ends is announced by queueing `app.callbacks.deliver_callback` on the callbacks queue,
which `chinfix callbacks` drains: delivery never waits behind an edit on a GPU worker, and needs no torch.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from datetime import timedelta
from urllib.parse import urlsplit

import redis
from rq import Queue

from chinfix.contract import ErrorCode, RedisKeys
from chinfix.errors import ChinfixError
from chinfix.settings import Settings

DELIVER_FUNCTION = "app.callbacks.deliver_callback"
MAX_RETRY_INTERVAL_SECONDS = 900.0
SIGNATURE_HEADER = "Chinfix-Signature"
JOB_ID_HEADER = "Chinfix-Job-Id"


class CallbackRefused(ChinfixError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_CALLBACK_URL, message)


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the scheme Stripe uses: the timestamp inside the
    signed text lets a receiver refuse replays of old deliveries."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delays(base_seconds: float, window_seconds: float) -> list[float]:
    """Seconds to wait before each retry: doubling from `base_seconds` (each at most 15 minutes), as many as
    fit in `window_seconds` after the first attempt."""
    delays, waited, delay = [], 0.0, base_seconds
    while waited + delay <= window_seconds:
        delays.append(delay)
        waited += delay
        delay = min(delay * 2.0, MAX_RETRY_INTERVAL_SECONDS)
    return delays


def check_callback_url(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """Refuse (CallbackRefused) a URL that is not https (plain http only to allowed hosts), or whose host
    resolves to a private, loopback, link-local or otherwise non-public address and is not allowed: the
    service must not be a way into its own network (server-side request forgery).

    Called when the job is submitted and again before each delivery, since DNS answers change. Returns the address
    it checked: a delivery connects to that one, never to what the name resolves to a moment later (a DNS answer
    that changes in between, "DNS rebinding", would otherwise lead the POST past the check)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise CallbackRefused(f"callback_url must be an absolute https URL, not {url!r}.")
    allowed = host in {name.lower() for name in allowed_hosts}
    if parts.scheme == "http" and not allowed:
        raise CallbackRefused("callback_url must use https; plain http only to hosts in CHINFIX_CALLBACK_ALLOW.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)))
    except (OSError, ValueError) as error:
        raise CallbackRefused(f"The host of callback_url, {host}, does not resolve ({error}).") from None
    for address in addresses:
        if not allowed and not ipaddress.ip_address(address.split("%", 1)[0]).is_global:
            raise CallbackRefused(
                f"callback_url's host {host} resolves to {address}, a private or local address; "
                "add the host to CHINFIX_CALLBACK_ALLOW if that is intended."
            )
    return addresses[0]


def schedule_callback(connection: redis.Redis, settings: Settings, job_id: str) -> bool:
    """Queue the first delivery of the callback of a job that just ended, once whoever calls: the worker that
    finished it, or an API replica that found it lost. False when it was already queued.

    The marker and the delivery are written in one transaction that watches the marker: a Redis that drops in
    between leaves neither, so the caller's retry queues it; two callers racing queue it once."""
    marker = RedisKeys(settings.key_prefix).job_callback_scheduled(job_id)

    def queue_first_delivery(pipe: redis.client.Pipeline) -> bool:
        if pipe.exists(marker):
            return False
        # RQ starts the transaction (MULTI) itself, which must come before any queued command.
        queue_delivery(connection, settings, job_id, attempt=1, delay_seconds=0.0, pipeline=pipe)
        pipe.set(marker, "1", ex=settings.job_ttl_seconds)
        return True

    # redis-py runs it again after a WatchError, which is also what a connection lost during EXEC raises: the
    # marker then tells whether that EXEC took effect.
    return connection.transaction(queue_first_delivery, marker, value_from_callable=True)


def queue_delivery(
    connection: redis.Redis,
    settings: Settings,
    job_id: str,
    attempt: int,
    delay_seconds: float,
    pipeline: redis.client.Pipeline | None = None,
) -> None:
    """Queue one delivery attempt, now or after `delay_seconds`; into `pipeline`'s transaction when given."""
    queue = Queue(settings.callback_queue_name, connection=connection)
    arguments = {
        "args": (job_id, attempt),
        "job_timeout": int(settings.callback_timeout_seconds * 3) + 10,
        "result_ttl": 600,
        "failure_ttl": settings.job_ttl_seconds,
        "pipeline": pipeline,
    }
    if delay_seconds > 0:
        queue.enqueue_in(timedelta(seconds=delay_seconds), DELIVER_FUNCTION, **arguments)
    else:
        queue.enqueue(DELIVER_FUNCTION, **arguments)
