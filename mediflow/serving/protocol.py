"""uvicorn's httptools protocol with bounded request heads: size, header count and time.

httptools sets no limit on a request line or a header: it accumulates a header's value piece by
piece until the line ends, so a 100 MiB header costs the server 100 MiB and, re-copied on every
piece, seconds of CPU that stall every other request. Here the bytes of a request's head are
counted as they arrive, before the parser sees them, and a head larger than `max_head_bytes`, with
more than `max_headers` fields, or not complete within `head_timeout_s` is answered 431 (or 408) and
its connection closed, before any application code runs. (As nginx's large_client_header_buffers
and client_header_timeout, Apache's LimitRequestFieldSize/LimitRequestFields.)
"""

from __future__ import annotations

import asyncio

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0


class _TooManyHeaders(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose request heads are bounded (see the module docstring); pass the class
    made by `bounded_protocol` as uvicorn's `http` setting."""

    max_head_bytes = MAX_HEAD_BYTES
    max_headers = MAX_HEADERS
    head_timeout_s = HEAD_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:  # the first bytes of a request on a kept-alive connection
                self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._header_count > self.max_headers:  # on_header raised _TooManyHeaders
                self._refuse(431, f"more than {self.max_headers} header fields")
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(431, f"request line and headers larger than {self.max_head_bytes // 1024} KB")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            raise _TooManyHeaders()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next bytes on this connection start a new head; its timer starts with them.
        self._in_head = True
        self._head_bytes = 0

    def _cancel_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:
            if self.cycle is None:
                self.transport.close()  # connected and never said anything
            return  # between requests: uvicorn's keep-alive timeout looks after idle connections
        self._refuse(408, f"the request headers did not arrive within {self.head_timeout_s:g} seconds")

    def _refuse(self, status: int, reason: str) -> None:
        """A plain-text answer and a closed connection: no application code has run for it."""
        self._cancel_head_timer()
        self.logger.info("refused request: %d %s", status, reason)
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = reason.encode("ascii")
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n%s"
                             % (status, phrase, len(body), body))
        self.transport.close()
        self._in_head = False


def bounded_protocol(max_head_bytes: int = MAX_HEAD_BYTES, max_headers: int = MAX_HEADERS,
                     head_timeout_s: float = HEAD_TIMEOUT_S) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with these bounds, for `uvicorn.run(..., http=...)`."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,),
                {"max_head_bytes": max_head_bytes, "max_headers": max_headers, "head_timeout_s": head_timeout_s})
