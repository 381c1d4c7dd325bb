"""The FastAPI application: `POST /api/vision/analyze`, `/health`, `/api/model`, `/api/model/evaluation`
and the web app (built from frontend/ into static/) at `/`, `/worklist` and `/model`."""

from __future__ import annotations

import html
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from mediflow import DISCLAIMER, __version__
from mediflow.data.images import sniff_format
from mediflow.errors import ImageDecodeError
from mediflow.inference.input_check import InputRejected
from mediflow.inference.predictor import Predictor
from mediflow.logs import quiet_libraries
from mediflow.serving.audit import router as audit_router
from mediflow.serving.docs_page import install_docs
from mediflow.serving.errors import validation_failed
from mediflow.serving.evaluation import read_evaluation
from mediflow.serving.health import probe_store
from mediflow.serving.inference_thread import InferenceThread
from mediflow.serving.limits import UploadLimitMiddleware
from mediflow.serving.public import public_view
from mediflow.serving.response_headers import StandardHeadersMiddleware
from mediflow.serving.schemas import AnalysisResponse, ErrorResponse, HealthResponse, ModelCard, RejectedResponse
from mediflow.serving.settings import Settings
from mediflow.serving.studies import install as install_studies, record_analysis, record_refusal
from mediflow.serving.upload import format_size, read_file_field

log = logging.getLogger("mediflow.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
UPLOAD_FIELD = "file"
ANALYZE_PATH = "/api/vision/analyze"
# Every route that takes an upload body: they share the in-flight limit (limits.py).
UPLOAD_PATHS = (ANALYZE_PATH,)

# The endpoint reads the body itself (see upload.py), so the multipart form is declared here for /docs.
UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": [UPLOAD_FIELD],
            "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary",
                                          "description": "chest X-ray, JPEG, PNG, WebP, TIFF or DICOM "
                                                         "(checked by content)"}},
        }}},
    }
}

# Longest wait of the /health store probe, in seconds (less when --db-timeout is shorter).
HEALTH_PROBE_S = 2.0

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


def warm_up(predictor: Predictor) -> float:
    """One throw-away prediction, so the first doctor does not wait for lazy initialisation. Returns ms."""
    t0 = time.perf_counter()
    size = predictor.prep.image_size
    # The model pass itself: a flat grey image would stop at the input check, before the model.
    predictor.forward(predictor.preprocess_array(Image.new("RGB", (size, size), (128, 128, 128)))[None])
    return (time.perf_counter() - t0) * 1000


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


def load_predictor(settings: Settings) -> Predictor:
    from mediflow.inference.backends import serving_threads

    # Tuned for one image at a time (see serving_threads): no spinning between requests, one thread
    # after an idle spell.
    return Predictor.load(settings.model_path, backend=settings.backend, device=settings.device,
                          threads=settings.threads or serving_threads(), serving=True,
                          review_below=settings.review_below)


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> FastAPI:
    settings = settings or Settings()
    quiet_libraries()  # pydicom's header values never reach the server's logs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.predictor is None:
            app.state.predictor = load_predictor(settings)
        # On the thread that will run every analysis.
        ms = await app.state.inference.run(warm_up, app.state.predictor)
        log.info("model %s warmed up in %.0f ms", app.state.predictor.info.architecture, ms)
        try:
            yield
        finally:
            app.state.inference.close()

    # /docs is served by docs_page.py (local assets, a CSP); ReDoc would load from a CDN.
    app = FastAPI(title="MediFlow", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Pediatric chest X-ray pneumonia screening. " + DISCLAIMER)
    app.state.settings = settings
    app.state.predictor = predictor
    # One inference at a time per process, on one thread (inference_thread.py).
    app.state.inference = InferenceThread()
    # Added first, so it runs inside CORS (a 503 still carries the CORS headers) and the access
    # middleware (a refusal is authenticated and audited like any other answer).
    app.add_middleware(UploadLimitMiddleware, upload_paths=UPLOAD_PATHS,
                       max_in_flight=settings.max_uploads_in_flight, max_upload_bytes=settings.max_upload_bytes,
                       retry_after_s=settings.retry_after_s, min_rate=settings.min_upload_rate)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def get_predictor(request: Request) -> Predictor:
        p = request.app.state.predictor
        if p is None:
            raise HTTPException(503, detail="model not loaded yet")
        return p

    @app.get("/health/live", summary="liveness: the process answers")
    def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health", response_model=HealthResponse, summary="readiness: model loaded and store taking writes",
             responses={503: {"model": HealthResponse, "description": "the model is not loaded, or the study "
                                                                      "store cannot take writes (see store.problem)"}})
    async def health(request: Request) -> JSONResponse:
        p = request.app.state.predictor
        store = request.app.state.store
        if store is None:
            state = {"status": "none", "problem": None}
        else:
            # Bounded: a hung database must not hang the health check.
            state = await run_in_threadpool(probe_store, store, request.app.state.store_health,
                                            min(settings.db_timeout_s, HEALTH_PROBE_S))
        ready = p is not None and state["status"] != "failing"
        body = HealthResponse(status="ok" if ready else "failing", model_loaded=p is not None, store=state,
                              version=__version__).model_dump()
        return JSONResponse(body, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": str(settings.retry_after_s)})

    @app.get("/api/model", response_model=ModelCard)
    def model_card(request: Request) -> dict[str, Any]:
        return public_view(get_predictor(request).model_card())

    @app.get("/api/model/evaluation", responses={404: {"model": ErrorResponse, "description": "no evaluation "
                                                          "file next to the served checkpoint"},
                                                   503: {"model": ErrorResponse, "description": "the file is damaged"}})
    def model_evaluation(request: Request) -> dict[str, Any]:
        """The latest evaluation of the served model: `<checkpoint stem>.evaluation.json` next to the
        checkpoint (written by benchmarks/generalization.py), as it is on disk."""
        return public_view(read_evaluation(get_predictor(request).info.path))

    @app.post(ANALYZE_PATH, response_model=AnalysisResponse, openapi_extra=UPLOAD_OPENAPI,
              responses={400: {"model": ErrorResponse, "description": "empty, corrupt, truncated, oversized-in-pixels "
                                                                       "or non-image upload"},
                         408: {"model": ErrorResponse, "description": "the body did not arrive within the "
                                                                      "upload timeout, or arrived slower than "
                                                                      "the minimum upload rate"},
                         413: {"model": ErrorResponse, "description": "upload larger than the size limit"},
                         422: {"model": RejectedResponse, "description": "the input check refused the image (not a "
                                                                         "chest radiograph, or blank): no finding; "
                                                                         "or no `file` field"},
                         503: {"model": ErrorResponse, "description": "busy: the uploads in progress fill "
                                                                      "the upload memory, or too many are open "
                                                                      "(see the Retry-After header); the model is "
                                                                      "not loaded yet; or the study store failed"}})
    async def analyze(request: Request,
                      preview: bool = Query(False, description="also return the decoded image as a PNG data URL "
                                                               "(at most 1024 px): browsers cannot show DICOM"),
                      heatmap: bool = Query(False, description="add `heatmap`: where the model looked (PNG data URL)")
                      ) -> dict[str, Any]:
        """Multipart field `file`: a chest X-ray. Returns the finding; never a diagnosis."""
        predictor = get_predictor(request)
        try:
            data = await read_file_field(request, UPLOAD_FIELD, settings.max_upload_bytes,
                                         timeout_s=settings.upload_timeout_s)
        except HTTPException as exc:  # malformed multipart, oversized: details quote nothing from the body
            log.info("refused upload: %d %s", exc.status_code, exc.detail)
            raise
        except RequestValidationError:
            log.info("refused upload: 422 no '%s' field", UPLOAD_FIELD)
            raise
        refusal: InputRejected | None = None
        try:
            result, decoded = await request.app.state.inference.run(predictor.predict_upload, data,
                                                                    max_pixels=settings.max_pixels, preview=preview,
                                                                    heatmap=heatmap)
        except ImageDecodeError as exc:  # includes ImageTooLargeError (decompression bombs)
            # One line per refusal: the sniffed type and a reason that quotes nothing from the file.
            log.info("refused upload: %s, %s: %s", sniff_format(data) or "unknown type", type(exc).__name__,
                     exc.reason)
            raise HTTPException(400, detail=str(exc)) from None
        except InputRejected as exc:
            refusal = exc
        if refusal is not None:
            log.info("refused upload: %s, input check: %s", sniff_format(data) or "unknown type",
                     ",".join(r["code"] for r in refusal.input_check["reasons"] if r["severity"] == "rejected"))
            body = await record_refusal(request, data, {"detail": str(refusal), "input_check": refusal.input_check},
                                        refusal.dicom_header)
            return JSONResponse(status_code=422, content=body)
        return await record_analysis(request, data, result, decoded.dicom_header)

    app.add_exception_handler(RequestValidationError, validation_failed)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never echo internals (or image bytes) to the client; the log gets the type only.
        log.error("unexpected %s on %s", type(exc).__name__, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    index_html = render_index(settings)

    def index() -> HTMLResponse:
        return HTMLResponse(index_html, headers=PAGE_HEADERS)

    for path in APP_ROUTES:
        app.add_api_route(path, index, methods=["GET"], include_in_schema=False)

    install_studies(app, settings)  # study store, API keys, audit, worklist API
    app.include_router(audit_router)  # GET /api/audit
    install_docs(app)
    # Outermost: every response, refusals and static files included.
    app.add_middleware(StandardHeadersMiddleware, retry_after_s=settings.retry_after_s)
    # Only the built assets (hashed names): index.html is served above, filled in and with its CSP.
    app.mount("/static/assets", StaticFiles(directory=STATIC_DIR / "assets"), name="static")
    return app
