"""`/health/live` (the process answers) and `/health` (readiness: model loaded, study store taking writes).

Open to every caller: a load balancer or an orchestrator has no API key."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mediflow import __version__
from mediflow.inference.predictor import Predictor
from mediflow.serving.dependencies import get_optional_predictor, get_optional_store, get_settings, get_store_health
from mediflow.serving.health import StoreHealth, probe_store
from mediflow.serving.schemas import HealthResponse, LiveResponse
from mediflow.serving.settings import Settings
from mediflow.store.db import Store

router = APIRouter(prefix="/health", tags=["health"])

# Longest wait of the /health store probe, in seconds (less when --db-timeout is shorter).
HEALTH_PROBE_S = 2.0


@router.get("/live", response_model=LiveResponse, summary="liveness: the process answers")
def live() -> LiveResponse:
    return LiveResponse(status="ok")


@router.get("", response_model=HealthResponse, summary="readiness: model loaded and store taking writes",
            responses={503: {"model": HealthResponse, "description": "the model is not loaded, or the study "
                                                                     "store cannot take writes (see store.problem)"}})
async def health(predictor: Predictor | None = Depends(get_optional_predictor),
                 store: Store | None = Depends(get_optional_store),
                 store_health: StoreHealth = Depends(get_store_health),
                 settings: Settings = Depends(get_settings)) -> JSONResponse:
    if store is None:
        state = {"status": "none", "problem": None}
    else:
        # Bounded: a hung database must not hang the health check.
        state = await run_in_threadpool(probe_store, store, store_health, min(settings.db_timeout_s, HEALTH_PROBE_S))
    ready = predictor is not None and state["status"] != "failing"
    body = HealthResponse(status="ok" if ready else "failing", model_loaded=predictor is not None, store=state,
                          version=__version__).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503,
                        headers=None if ready else {"Retry-After": str(settings.retry_after_s)})
