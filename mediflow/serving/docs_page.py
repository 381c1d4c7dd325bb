"""`/docs`: Swagger UI 5 from files installed with the server (the fastapi-offline package ships
them; its own pages are not used, they start Swagger UI with an inline script), never from a CDN,
under a CSP that allows nothing from elsewhere and no inline script.

FastAPI's own /docs page loads swagger-ui from a public CDN, unpinned and without integrity hashes,
on the app's own origin, and starts it with an inline script. When API keys are set, /docs and
/openapi.json need a key like /api (serving/auth.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
INIT_JS = Path(__file__).resolve().parent / "docs_static" / "init.js"
# Swagger UI sets inline style attributes and embeds SVG icons as data: URLs.
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - API documentation</title>
<link rel="icon" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""


def is_docs_path(path: str) -> bool:
    """/docs, its assets and the OpenAPI document: what the API keys guard besides /api."""
    return path == "/openapi.json" or path == DOCS_PATH or path.startswith(DOCS_PATH + "/")


def install_docs(app: FastAPI) -> None:
    """Serve /docs locally; a server without the fastapi-offline package serves /openapi.json only."""
    try:
        import fastapi_offline
    except ImportError:
        return
    assets = Path(fastapi_offline.__file__).resolve().parent / "static"
    headers = {"Content-Security-Policy": DOCS_CSP}
    page = PAGE.format(title=app.title)

    def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    def init_js() -> FileResponse:
        return FileResponse(INIT_JS, media_type="text/javascript", headers=headers)

    app.add_api_route(DOCS_PATH, docs, methods=["GET"], include_in_schema=False)
    app.add_api_route(DOCS_PATH + "/init.js", init_js, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PATH, StaticFiles(directory=assets), name="docs-assets")
