"""The FastAPI application: `POST /api/vision/analyze`, `/health`, `/api/model` and the web page at `/`."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from mediflow import DISCLAIMER, __version__
from mediflow.errors import ImageDecodeError, ImageTooLargeError
from mediflow.inference.predictor import Predictor
from mediflow.serving.schemas import AnalysisResponse, HealthResponse
from mediflow.serving.settings import Settings

log = logging.getLogger("mediflow.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """Read at most `limit` bytes; one more means the upload is too large (413), whatever it claims."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail=f"upload exceeds the {limit // (1024 * 1024)} MB limit")
    return data


def load_predictor(settings: Settings) -> Predictor:
    return Predictor.load(settings.model_path, backend=settings.backend, device=settings.device,
                          threads=settings.threads, review_below=settings.review_below)


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.predictor is None:
            app.state.predictor = load_predictor(settings)
        yield

    app = FastAPI(title="MediFlow", version=__version__, lifespan=lifespan,
                  description="Pediatric chest X-ray pneumonia screening. " + DISCLAIMER)
    app.state.settings = settings
    app.state.predictor = predictor
    # One inference at a time per process: torch already uses every core for one image, and
    # queuing keeps latency predictable instead of thrashing.
    app.state.inference_lock = asyncio.Lock()
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def get_predictor(request: Request) -> Predictor:
        return request.app.state.predictor

    @app.get("/health", response_model=HealthResponse)
    def health(request: Request) -> HealthResponse:
        p = request.app.state.predictor
        return HealthResponse(status="ok", model_loaded=p is not None, version=__version__)

    @app.get("/api/model")
    def model_card(predictor: Predictor = Depends(get_predictor)) -> dict[str, Any]:
        return predictor.model_card()

    @app.post("/api/vision/analyze", response_model=AnalysisResponse,
              responses={400: {"description": "not a readable JPEG/PNG/DICOM image"},
                         413: {"description": "upload too large"}})
    async def analyze(request: Request, file: UploadFile = File(..., description="chest X-ray (JPEG, PNG or DICOM)"),
                      heatmap: bool = Query(False, description="add `heatmap`: where the model looked (PNG data URL)"),
                      predictor: Predictor = Depends(get_predictor)) -> dict[str, Any]:
        data = await read_upload(file, settings.max_upload_bytes)
        async with request.app.state.inference_lock:
            try:
                # Decode and inference run in a worker thread so the event loop keeps serving /health.
                return await asyncio.to_thread(predictor.predict_bytes, data, name="upload",
                                               max_pixels=settings.max_pixels, heatmap=heatmap)
            except ImageTooLargeError as exc:
                raise HTTPException(400, detail=str(exc)) from None
            except ImageDecodeError as exc:
                raise HTTPException(400, detail=str(exc)) from None

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never echo internals (or image bytes) to the client; the log gets the type only.
        log.error("unexpected %s on %s", type(exc).__name__, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
