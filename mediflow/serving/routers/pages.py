"""The web app (built from frontend/ into static/): each of its client-side routes answers the same
index.html, filled in with the server's values, under a strict CSP. Not part of the API's schema."""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from mediflow import DISCLAIMER, __version__
from mediflow.serving.settings import Settings
from mediflow.serving.upload import format_size

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Client-side routes of the web app: each path answers the same index.html.
APP_ROUTES = ("/", "/worklist", "/model")

# The app needs nothing from other origins and has no inline script or style (Vite emits files);
# images are blob: URLs of the doctor's own file or data: URLs (DICOM previews, heatmaps) that the
# canvas viewer draws. React's `style` props are set through the CSSOM, which style-src allows.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


def render_index(settings: Settings) -> str:
    """The built app's index.html with the server's values in its <meta> tags: the app can never
    show a stale disclaimer or a wrong size limit, even before an API key is entered."""
    values = {
        "DISCLAIMER": DISCLAIMER,
        "VERSION": __version__,
        "MAX_UPLOAD": format_size(settings.max_upload_bytes),
        "MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
    }
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value))
    return page


def index(request: Request) -> HTMLResponse:
    """The page create_app rendered once at start-up (`app.state.index_html`)."""
    return HTMLResponse(request.app.state.index_html, headers=PAGE_HEADERS)


for _path in APP_ROUTES:
    router.add_api_route(_path, index, methods=["GET"])
