"""Bounds on what the server holds at once, so that a burst of uploads cannot exhaust its memory.

Each upload is kept in memory while it is read, queued for the one-at-a-time model and saved
(see upload.py and app.py), so the memory an upload route can take is at most
`max_in_flight x (max_upload_bytes + framing)` plus one decode. The count must start before the body
arrives: a client trickling a 20 MB body holds its buffer for as long as it likes.

uvicorn's `--limit-concurrency` is not used for this: it counts every connection and task (a
health check or an idle keep-alive connection takes a slot), and it answers a plain-text 503
without `Retry-After` or a `detail`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("mediflow.serve")

# Largest body accepted by a route that is not an upload route (a review's JSON is well under
# 1 KB). Starlette reads such bodies whole, so without a cap one request could take any amount.
SMALL_BODY_BYTES = 64 * 1024


class UploadLimitMiddleware:
    """ASGI middleware: at most `max_in_flight` requests to `upload_paths` at once; a small body elsewhere.

    An upload request is counted from the moment its headers are in (before any of its body is
    read) until its response is sent, which covers reading the body, waiting for the model and
    saving the study. Requests beyond the limit are answered at once, without reading their body,
    with 503, a `Retry-After` header (seconds) and a JSON `detail`. A client that sent
    `Expect: 100-continue` is refused before it sends the body (uvicorn only sends
    `100 Continue` when the application first reads the body).

    Other routes accept a body only with a `Content-Length` of at most `small_body_bytes`: 413
    above it, 411 for a chunked body (no length to check before reading).

    Args:
        app: the wrapped ASGI application.
        upload_paths: exact request paths of the upload routes (POST), e.g. {"/api/vision/analyze"}.
        max_in_flight: uploads held at once, >= 1.
        retry_after_s: the `Retry-After` value sent with a 503, in seconds, >= 1.
        small_body_bytes: the body cap for every other route, in bytes.
    Raises:
        ValueError: max_in_flight or retry_after_s below 1.
    """

    def __init__(self, app: ASGIApp, *, upload_paths: Collection[str], max_in_flight: int, retry_after_s: int,
                 small_body_bytes: int = SMALL_BODY_BYTES):
        if max_in_flight < 1 or retry_after_s < 1:
            raise ValueError("max_in_flight and retry_after_s must be at least 1")
        self.app = app
        self.upload_paths = frozenset(upload_paths)
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.small_body_bytes = small_body_bytes
        # One event loop per process and no await between the check and the increment, so a
        # plain counter is exact.
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.upload_paths and scope["method"] == "POST":
            await self._upload(scope, receive, send)
            return
        refusal = self._body_refusal(Headers(scope=scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.in_flight >= self.max_in_flight:
            log.info("refused upload: 503 busy, %d uploads in flight", self.in_flight)
            await self.busy_response()(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def busy_response(self) -> JSONResponse:
        s = "" if self.retry_after_s == 1 else "s"
        detail = (f"the server is busy: {self.max_in_flight} uploads are already in progress; "
                  f"retry in {self.retry_after_s} second{s}")
        return JSONResponse({"detail": detail}, status_code=503,
                            headers={"Retry-After": str(self.retry_after_s), "Cache-Control": "no-store"})

    def _body_refusal(self, headers: Headers) -> JSONResponse | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return JSONResponse({"detail": "send this request with a Content-Length header "
                                           "(chunked bodies are accepted only for uploads)"}, status_code=411)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.small_body_bytes:
            return JSONResponse({"detail": f"request body is larger than the {self.small_body_bytes // 1024} KB "
                                           "limit for this route"}, status_code=413)
        return None
