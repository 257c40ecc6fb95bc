"""The FastAPI application. `create_app` is the factory uvicorn runs (`chinfix serve`)."""

from __future__ import annotations

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from rq import Queue

from app.errors import install_error_handlers
from app.limits import RateLimiter
from app.metrics import install_metrics
from app.page import install_page
from app.routes import health_router, jobs_router
from chinfix.contract import RedisKeys
from chinfix.jobs import JobStore, connect_redis
from chinfix.settings import Settings

DESCRIPTION = """
Remove a double chin from a portrait photo and leave every other pixel as it was.

1. `POST /edit` with the photo (multipart field `image`) and options → `202` with a job id.
2. Poll `GET /jobs/{id}` until `status` is `succeeded` or `failed`.
3. Download `GET /jobs/{id}/result`.

Errors are JSON: `{"error": {"code": "...", "message": "..."}}`.

With API keys configured, send `Authorization: Bearer <key>`: a job belongs to the tenant whose key created it.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Swagger UI and ReDoc served from the fastapi-offline package: /docs works without internet.
    app = FastAPIOffline(title="chinfix", version="0.1.0", description=DESCRIPTION)
    connection = connect_redis(settings)
    app.state.settings = settings
    app.state.redis = connection
    app.state.job_store = JobStore.from_settings(settings, connection)
    app.state.queue = Queue(settings.queue_name, connection=connection)
    app.state.upload_check_slots = anyio.CapacityLimiter(settings.max_concurrent_checks)
    app.state.rate_limiter = (
        RateLimiter(connection, RedisKeys(settings.key_prefix), settings.rate_limit, settings.rate_burst)
        if settings.rate_limit
        else None
    )
    install_error_handlers(app)
    install_metrics(app, app.state.job_store, app.state.queue)
    app.include_router(health_router)
    app.include_router(jobs_router)
    install_page(app)
    return app
