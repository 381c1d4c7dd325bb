"""Headers every response carries, whatever produced it (a route, a static file, a refusal)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class StandardHeadersMiddleware:
    """Adds `X-Content-Type-Options: nosniff` to every HTTP response (a browser must not run a
    stored upload or a JSON answer as HTML or script because its bytes look like one), and
    `Retry-After` to every 503 that lacks one, so that a client always knows when to come back.

    Args:
        app: the wrapped ASGI application.
        retry_after_s: seconds to put in a 503's Retry-After when its producer set none.
    """

    def __init__(self, app: ASGIApp, *, retry_after_s: int):
        self.app = app
        self.retry_after = str(retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if message["status"] == 503:
                    headers.setdefault("Retry-After", self.retry_after)
            await send(message)

        await self.app(scope, receive, send_with_headers)
