"""The FastAPI application. `create_app` is the factory uvicorn runs (`chinfix serve`)."""

from __future__ import annotations

from fastapi import FastAPI
from rq import Queue

from app.errors import install_error_handlers
from app.metrics import install_metrics
from app.page import install_page
from app.schemas import ErrorEnvelope
from app.routes import health_router, jobs_router
from chinfix.jobs import JobStore, connect_redis
from chinfix.settings import Settings

DESCRIPTION = """
Remove a double chin from a portrait photo and leave every other pixel as it was.

1. `POST /edit` with the photo (multipart field `image`) and options → `202` with a job id.
2. Poll `GET /jobs/{id}` until `status` is `succeeded` or `failed`.
3. Download `GET /jobs/{id}/result`.

Errors are JSON: `{"error": {"code": "...", "message": "..."}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="chinfix",
        version="0.1.0",
        description=DESCRIPTION,
        responses={"4XX": {"model": ErrorEnvelope, "description": "Error"}},
    )
    connection = connect_redis(settings)
    app.state.settings = settings
    app.state.redis = connection
    app.state.job_store = JobStore.from_settings(settings, connection)
    app.state.queue = Queue(settings.queue_name, connection=connection)
    install_error_handlers(app)
    install_metrics(app, app.state.job_store, app.state.queue)
    app.include_router(health_router)
    app.include_router(jobs_router)
    install_page(app)
    return app
