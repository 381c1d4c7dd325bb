"""Bounds on what the server holds at once, so that a burst of uploads cannot exhaust its memory and
slow clients cannot lock others out.

Each upload is kept in memory while it is read, queued for the one-at-a-time model and saved (see
upload.py and app.py). Uploads therefore share a byte budget of
`max_in_flight x (max_upload_bytes + framing)`: an upload is charged the bytes it has actually sent,
not the size its headers announce, so a slot is earned by progress. A client that sends headers and
then trickles its body holds almost nothing and delays nobody; one that has sent 20 MB holds 20 MB.

Beside the budget: an upload must keep up a minimum data rate after a short grace period (as
Apache's mod_reqtimeout and nginx's client_body_timeout enforce), at most `max_receiving` uploads
are open at once and one client address may hold at most half of them.

uvicorn's `--limit-concurrency` is not used for this: it counts every connection and task (a
health check or an idle keep-alive connection takes a slot), and it answers a plain-text 503
without `Retry-After` or a `detail`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediflow.serving.upload import FRAMING_ALLOWANCE

log = logging.getLogger("mediflow.serve")

# Largest body accepted by a route that is not an upload route (a review's JSON is well under
# 1 KB). Starlette reads such bodies whole, so without a cap one request could take any amount.
SMALL_BODY_BYTES = 64 * 1024
# Uploads open at once (receiving, queued or analysed), per `max_in_flight` of budget: a trickling
# client costs a coroutine and a socket, not a buffer, so many may wait side by side.
RECEIVING_PER_SLOT = 8
# Seconds an upload may send slower than the minimum rate before the rate is enforced (a client's
# TCP slow start, a busy laptop).
RATE_GRACE_S = 10.0


class UploadLimitMiddleware:
    """ASGI middleware: a byte budget, a count and a data rate for uploads; a small body elsewhere.

    Upload requests (POST to `upload_paths`) are refused with 503, a `Retry-After` header (seconds)
    and a JSON `detail`, without reading their body, when `max_receiving` uploads are open or their
    client address already holds half of them, or when the bytes the others have sent plus the
    size this one announces (Content-Length) exceed the budget. A client that sent
    `Expect: 100-continue` is refused before it sends the body (uvicorn sends `100 Continue` only
    when the application first reads it). An upload whose body, as it arrives, would take the
    budget past its end gets the same 503 (uvicorn then discards the rest of its body). One that
    sends slower than `min_rate` bytes/s on average once RATE_GRACE_S have passed gets 408 and
    its connection is closed.

    Other routes accept a body only with a `Content-Length` of at most `small_body_bytes`: 413
    above it, 411 for a chunked body (no length to check before reading).

    Args:
        app: the wrapped ASGI application.
        upload_paths: exact request paths of the upload routes (POST), e.g. {"/api/vision/analyze"}.
        max_in_flight: full-size uploads the budget holds, >= 1.
        max_upload_bytes: the largest upload accepted; the budget is
            max_in_flight x (max_upload_bytes + FRAMING_ALLOWANCE).
        retry_after_s: the `Retry-After` value sent with a 503, in seconds, >= 1.
        min_rate: bytes per second an upload must average after the grace period (0: no minimum).
        max_receiving: uploads open at once (default RECEIVING_PER_SLOT x max_in_flight).
        small_body_bytes: the body cap for every other route, in bytes.
    Raises:
        ValueError: max_in_flight or retry_after_s below 1.
    """

    def __init__(self, app: ASGIApp, *, upload_paths: Collection[str], max_in_flight: int,
                 max_upload_bytes: int, retry_after_s: int, min_rate: float = 0.0, max_receiving: int | None = None,
                 small_body_bytes: int = SMALL_BODY_BYTES):
        if max_in_flight < 1 or retry_after_s < 1:
            raise ValueError("max_in_flight and retry_after_s must be at least 1")
        self.app = app
        self.upload_paths = frozenset(upload_paths)
        self.max_in_flight = max_in_flight
        self.max_body = max_upload_bytes + FRAMING_ALLOWANCE
        self.budget = max_in_flight * self.max_body
        self.retry_after_s = retry_after_s
        self.min_rate = min_rate
        self.max_receiving = max_receiving or RECEIVING_PER_SLOT * max_in_flight
        self.max_per_client = max(1, self.max_receiving // 2)
        self.small_body_bytes = small_body_bytes
        # One event loop per process and no await between a check and its update, so plain
        # counters are exact.
        self.open = 0
        self.per_client: Counter[str] = Counter()
        self.charged = 0  # body bytes of open uploads

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
        client = (scope.get("client") or ("unknown", 0))[0]
        declared = Headers(scope=scope).get("content-length", "")
        announced = int(declared) if declared.isdigit() else 0
        why = None
        if self.open >= self.max_receiving:
            why = f"{self.open} uploads are already open"
        elif self.per_client[client] >= self.max_per_client:
            why = f"this address already has {self.per_client[client]} uploads open"
        elif announced <= self.max_body and self.charged + announced > self.budget:  # larger: 413 from the app
            why = "the uploads in progress fill the upload memory"
        if why is not None:
            log.info("refused upload: 503 busy, %s", why)
            await self.busy_response(why)(scope, receive, send)
            return
        self.open += 1
        self.per_client[client] += 1
        charged = 0
        started = time.monotonic()

        async def metered_receive() -> Message:
            nonlocal charged
            message = await self._receive_in_time(receive, started, charged)
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if self.charged + size > self.budget:
                    log.info("refused upload: 503 busy, upload memory full after %d bytes", charged)
                    raise self.busy_error("the uploads in progress fill the upload memory")
                self.charged += size
                charged += size
            return message

        try:
            await self.app(scope, metered_receive, send)
        finally:
            self.charged -= charged
            self.open -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]

    async def _receive_in_time(self, receive: Receive, started: float, received: int) -> Message:
        """The next message, or 408 once the body falls below the minimum average rate."""
        if not self.min_rate:
            return await receive()
        # The moment this upload's average rate drops below the minimum if nothing more arrives.
        due = started + max(RATE_GRACE_S, (received + 1) / self.min_rate)
        try:
            async with asyncio.timeout(max(0.0, due - time.monotonic())):
                return await receive()
        except TimeoutError:
            log.info("refused upload: 408, %d bytes in %.0f s, under %g bytes/s", received,
                     time.monotonic() - started, self.min_rate)
            raise HTTPException(408, detail=f"the upload is arriving slower than {self.min_rate:g} bytes per "
                                            "second", headers={"Connection": "close"}) from None

    def busy_error(self, why: str) -> HTTPException:
        return HTTPException(503, detail=self._busy_detail(why), headers={"Retry-After": str(self.retry_after_s)})

    def busy_response(self, why: str) -> JSONResponse:
        return JSONResponse({"detail": self._busy_detail(why)}, status_code=503,
                            headers={"Retry-After": str(self.retry_after_s), "Cache-Control": "no-store"})

    def _busy_detail(self, why: str) -> str:
        s = "" if self.retry_after_s == 1 else "s"
        return f"the server is busy: {why}; retry in {self.retry_after_s} second{s}"

    def _body_refusal(self, headers: Headers) -> JSONResponse | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return JSONResponse({"detail": "send this request with a Content-Length header "
                                           "(chunked bodies are accepted only for uploads)"}, status_code=411)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.small_body_bytes:
            return JSONResponse({"detail": f"request body is larger than the {self.small_body_bytes // 1024} KB "
                                           "limit for this route"}, status_code=413)
        return None
