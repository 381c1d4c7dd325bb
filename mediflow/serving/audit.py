"""One audit row per /api call, whatever answered it: a route, an auth refusal (401), a busy or
oversized upload refused by the limits, an error.

The row holds the caller's key name, the method, the route template (e.g. /api/studies/{study_id},
never a query string), the status code and the study id: nothing from the request body. A plain
ASGI middleware: Starlette's BaseHTTPMiddleware would run every upload through an extra task and
memory stream (about a millisecond per analysis).
"""

from __future__ import annotations

import logging
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediflow.serving.auth import bearer_token, identify_caller, is_api_path, route_template

log = logging.getLogger("mediflow.serve")


class AuditMiddleware:
    """Writes the audit row of every /api call once its answer has started, and marks /api answers
    `Cache-Control: no-store`.

    The caller is the one the `authenticated` dependency named (dependencies.py); for a request no
    route saw (refused by the upload limits, no such route) it is worked out from the header the
    same way. A handler that wrote its own row in its transaction (a saved analysis) sets
    `request.state.audited`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        status: list[int] = []

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                # Study data must not linger in browser or proxy caches.
                MutableHeaders(scope=message).setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_no_store)
        except Exception:
            await self._audit(request, 500)
            raise
        await self._audit(request, status[0] if status else 500)

    async def _audit(self, request: Request, status_code: int) -> None:
        store = request.app.state.store
        if store is None or (status_code == 200 and getattr(request.state, "audited", False)):
            return  # no store, or the handler already wrote this call's row with its own data
        if getattr(request.state, "storage_failed", False):
            return  # the store just failed this request (and it was logged): the row would wait and fail too
        actor = getattr(request.state, "actor", None)
        if actor is None:
            actor, _ = identify_caller(request.app.state.api_keys, bearer_token(request.headers.get("authorization")))
        template = route_template(request)
        study_id = getattr(request.state, "study_id", None) or _path_uuid(request.scope.get("path_params", {}))
        from mediflow.store import repository

        def write() -> None:
            with store.session() as s:
                repository.add_audit(s, actor=actor, method=request.method, route=template,
                                     status_code=status_code, study_id=study_id)

        try:
            await run_in_threadpool(write)
        except Exception as exc:  # the response stands; the operator must see the gap
            log.error("audit write failed (%s) for %s %s", type(exc).__name__, request.method, template)


def _path_uuid(params: dict) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(params["study_id"]))
    except (KeyError, ValueError):
        return None
