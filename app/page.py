"""The try-it page at `GET /`: plain HTML, JavaScript and CSS shipped in `app/static` (no build step, no CDN).

The page talks to the service through the public API only (`POST /edit`, `GET /jobs/{id}`, its result), with
the API key the user types in when the service asks for one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

page_router = APIRouter(include_in_schema=False)


@page_router.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def install_page(app: FastAPI) -> None:
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
