"""The FastAPI application: `create_app` builds the server's state and assembles the routers
(routers/: health, analyze, model, studies, audit, the web app's pages), the middlewares that guard
every request (limits, CORS, audit, docs keys, standard headers) and the error handlers."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mediflow import DISCLAIMER, __version__
from mediflow.inference.predictor import Predictor
from mediflow.logs import quiet_libraries
from mediflow.serving.audit import AuditMiddleware
from mediflow.serving.auth import DocsKeyMiddleware, load_api_keys, no_such_route
from mediflow.serving.docs_page import install_docs
from mediflow.serving.errors import validation_failed
from mediflow.serving.health import StoreHealth
from mediflow.serving.inference_thread import InferenceThread
from mediflow.serving.limits import UploadLimitMiddleware
from mediflow.serving.response_headers import StandardHeadersMiddleware
from mediflow.serving.routers import analyze, audit, health, model, pages, studies
from mediflow.serving.routers.pages import STATIC_DIR, render_index
from mediflow.serving.settings import Settings
from mediflow.serving.studies import database_unavailable, open_store

log = logging.getLogger("mediflow.serve")


def warm_up(predictor: Predictor) -> float:
    """One throw-away prediction, so the first doctor does not wait for lazy initialisation. Returns ms."""
    t0 = time.perf_counter()
    size = predictor.prep.image_size
    # The model pass itself: a flat grey image would stop at the input check, before the model.
    predictor.forward(predictor.preprocess_array(Image.new("RGB", (size, size), (128, 128, 128)))[None])
    return (time.perf_counter() - t0) * 1000


def load_predictor(settings: Settings) -> Predictor:
    """The model the settings name (default: the bundled one), tuned for serving one image at a time."""
    from mediflow.inference.backends import serving_threads

    # Tuned for one image at a time (see serving_threads): no spinning between requests, one thread
    # after an idle spell.
    return Predictor.load(settings.model_path, backend=settings.backend, device=settings.device,
                          threads=settings.threads or serving_threads(), serving=True,
                          review_below=settings.review_below)


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Load the model (unless create_app was given one) and warm it up on the inference thread."""
    if app.state.predictor is None:
        app.state.predictor = load_predictor(app.state.settings)
    # On the thread that will run every analysis.
    ms = await app.state.inference.run(warm_up, app.state.predictor)
    log.info("model %s warmed up in %.0f ms", app.state.predictor.info.architecture, ms)
    try:
        yield
    finally:
        app.state.inference.close()


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Never echo internals (or image bytes) to the client; the log gets the type only."""
    log.error("unexpected %s on %s", type(exc).__name__, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> FastAPI:
    """The server: `predictor` when given (else the settings' model, loaded at start-up), the study
    store and API keys the settings name. The routes take these through serving/dependencies.py."""
    settings = settings or Settings()
    quiet_libraries()  # pydicom's header values never reach the server's logs
    # /docs is served by docs_page.py (local assets, a CSP); ReDoc would load from a CDN.
    app = FastAPI(title="MediFlow", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Pediatric chest X-ray pneumonia screening. " + DISCLAIMER)
    app.state.settings = settings
    app.state.predictor = predictor
    # One inference at a time per process, on one thread (inference_thread.py).
    app.state.inference = InferenceThread()
    app.state.api_keys = keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    # Whether callers must identify themselves, and how many may: never the keys or their names.
    log.info("API keys %s", f"on: {len(keys)} key{'s' if len(keys) != 1 else ''} configured; every /api call needs "
             "one" if keys else "off: /api calls are anonymous (make a key with `mediflow keys new NAME`)")
    app.state.store = open_store(settings)
    app.state.store_health = StoreHealth()
    app.state.index_html = render_index(settings)

    # Added first, so it runs inside CORS (a 503 still carries the CORS headers) and the audit
    # middleware (a refusal is audited like any other answer).
    app.add_middleware(UploadLimitMiddleware, upload_paths=analyze.UPLOAD_PATHS,
                       max_in_flight=settings.max_uploads_in_flight, max_upload_bytes=settings.max_upload_bytes,
                       retry_after_s=settings.retry_after_s, min_rate=settings.min_upload_rate)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(AuditMiddleware)
    app.add_middleware(DocsKeyMiddleware)
    # Outermost: every response, refusals and static files included.
    app.add_middleware(StandardHeadersMiddleware, retry_after_s=settings.retry_after_s)

    for area in (health, model, analyze, studies, audit, pages):
        app.include_router(area.router)
    install_docs(app)
    # Only the built assets (hashed names): index.html is served by the pages router, filled in and with its CSP.
    app.mount("/static/assets", StaticFiles(directory=STATIC_DIR / "assets"), name="static")

    app.add_exception_handler(StarletteHTTPException, no_such_route)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(SQLAlchemyError, database_unavailable)
    app.add_exception_handler(Exception, unexpected)
    return app
