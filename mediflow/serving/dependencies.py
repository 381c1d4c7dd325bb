"""What the routes take from the running server, as FastAPI dependencies: the settings, the model,
the study store, the inference thread and the caller.

`create_app` keeps each of them on `app.state`; a route asks for one with `Depends(get_predictor)`
(etc.), so a test can swap any of them with `app.dependency_overrides`. The model and the store
answer 503 with a `detail` when they are missing; the caller is checked by `current_user`, a
`Security` dependency on the HTTP bearer scheme, so /openapi.json shows how to authenticate.
They are `async def` although none awaits: FastAPI runs a plain `def` dependency on its thread pool,
a thread hop per dependency per request.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mediflow.inference.predictor import Predictor
from mediflow.serving.auth import ApiKeys, identify_caller
from mediflow.serving.health import StoreHealth
from mediflow.serving.inference_thread import InferenceThread
from mediflow.serving.settings import Settings
from mediflow.store.db import Store

MODEL_NOT_LOADED = "model not loaded yet"
NO_STORE = "this server keeps no studies: start it with a database (--database-url or MEDIFLOW_DATABASE_URL)"

# auto_error=False: a missing or non-bearer header is answered by current_user, with the same
# 401 and wording whether keys are checked or not.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="APIKey",
                           description="an API key made with `mediflow keys new NAME`, sent as "
                                       "`Authorization: Bearer <key>`; needed when the server has keys")


async def get_settings(request: Request) -> Settings:
    """The server's settings (environment and `mediflow serve` flags)."""
    return request.app.state.settings


async def get_optional_predictor(request: Request) -> Predictor | None:
    """The loaded model, or None while it is still loading."""
    return request.app.state.predictor


async def get_predictor(predictor: Predictor | None = Depends(get_optional_predictor)) -> Predictor:
    """The loaded model; 503 with a `detail` before it has loaded."""
    if predictor is None:
        raise HTTPException(503, detail=MODEL_NOT_LOADED)
    return predictor


async def get_optional_store(request: Request) -> Store | None:
    """The study store, or None when the server keeps no studies."""
    return request.app.state.store


async def get_store(store: Store | None = Depends(get_optional_store)) -> Store:
    """The study store; 503 with a `detail` when the server keeps none."""
    if store is None:
        raise HTTPException(503, detail=NO_STORE)
    return store


async def get_store_health(request: Request) -> StoreHealth:
    """The outcome of the store's recent writes (what /health reports beside its probe)."""
    return request.app.state.store_health


async def get_inference(request: Request) -> InferenceThread:
    """The one thread every decode and model run goes through."""
    return request.app.state.inference


async def get_api_keys(request: Request) -> ApiKeys | None:
    """The configured API keys; None when auth is off."""
    return request.app.state.api_keys


async def current_user(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
                 keys: ApiKeys | None = Depends(get_api_keys)) -> str:
    """The caller's key name ('anonymous' when the server has no keys); 401 with `WWW-Authenticate:
    Bearer` for a missing or unknown key."""
    actor, denied = identify_caller(keys, credentials.credentials if credentials else None)
    if denied is not None:
        raise HTTPException(401, detail=denied, headers={"WWW-Authenticate": "Bearer"})
    return actor


async def authenticated(request: Request, actor: str = Security(current_user)) -> str:
    """`current_user`, remembered on the request for its audit row (audit.py). Every /api router
    depends on this one, so overriding `current_user` also changes who the audit log names."""
    request.state.actor = actor
    return actor


async def model_loaded(predictor: Predictor = Depends(get_predictor)) -> None:
    """Router-wide: the API answers 503 until the server is ready, never a 500 from a missing model."""
