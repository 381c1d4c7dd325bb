"""Read one file field of a multipart upload into memory, with a hard size cap.

Starlette's own form parser spools file parts larger than 1 MB to a temporary file on disk and
reads the whole body before the endpoint sees it. An X-ray must never touch the disk (privacy), and
an oversized body should be refused as soon as it crosses the limit, so the endpoint streams the
body through python-multipart itself and keeps only the wanted field, in memory.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

# Room for the multipart framing (boundaries, part headers, a long file name) around the file itself.
FRAMING_ALLOWANCE = 64 * 1024


def format_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MB"
    if n >= 1024:
        return f"{n / 1024:g} KB"
    return f"{n} bytes"


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, detail=f"upload is larger than the {format_size(limit)} limit")


def missing_field(field: str, why: str) -> RequestValidationError:
    # The same shape FastAPI gives for a missing File(...) parameter, so clients see one 422 format.
    return RequestValidationError([{"type": "missing", "loc": ("body", field), "msg": f"Field required: {why}",
                                    "input": None}])


def check_content_length(request: Request, limit: int) -> None:
    """Refuse a body that announces itself as too large before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FRAMING_ALLOWANCE:
        raise too_large(limit)


def too_slow(timeout_s: float) -> HTTPException:
    # Connection: close: the client is still sending; draining the rest of its body would keep
    # the connection busy for as long as it likes.
    return HTTPException(408, detail=f"the upload did not arrive within {timeout_s:g} seconds",
                         headers={"Connection": "close"})


async def read_file_field(request: Request, field: str, limit: int, timeout_s: float | None = None) -> bytes:
    """The bytes of multipart field `field`; 413 once it exceeds `limit`, 422 when absent, 400 when
    the body is not valid multipart, 408 when the whole body has not arrived within `timeout_s`
    seconds (None: no deadline). Never buffers more than `limit` (+ framing) bytes."""
    check_content_length(request, limit)
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise missing_field(field, f"send the image as multipart/form-data field '{field}'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, detail="malformed multipart body: no boundary in the Content-Type header")

    state = _FieldCollector(field.encode(), limit)
    try:
        parser = MultipartParser(boundary, state.callbacks())
    except FormParserError:  # python-multipart refuses boundaries longer than 256 bytes
        raise HTTPException(400, detail="malformed multipart body: the boundary in the Content-Type header is "
                                        "too long (RFC 2046 allows 70 characters)") from None
    try:
        # A slow client holds its buffer and one of the server's upload slots (limits.py) while it
        # sends, so the whole body has a deadline, not just each chunk.
        async with asyncio.timeout(timeout_s):
            await _stream_into(request, parser, limit)
    except TimeoutError:
        raise too_slow(timeout_s) from None
    except FormParserError:
        raise HTTPException(400, detail="malformed multipart body") from None
    except ClientDisconnect:
        # Nobody is left to read a response; a 400 keeps the handler's contract simple.
        raise HTTPException(400, detail="client disconnected during the upload") from None
    if not state.finished:
        raise HTTPException(400, detail="malformed multipart body: it ends before the closing boundary")
    if state.count == 0:
        raise missing_field(field, f"no multipart field named '{field}'")
    if state.count > 1:
        raise HTTPException(400, detail=f"send one image per request (got {state.count} '{field}' fields)")
    return bytes(state.data)


async def _stream_into(request: Request, parser: MultipartParser, limit: int) -> None:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit + FRAMING_ALLOWANCE:
            raise too_large(limit)
        parser.write(chunk)
    parser.finalize()


class _FieldCollector:
    """python-multipart callbacks that keep the data of one named part and drop every other part."""

    def __init__(self, field: bytes, limit: int):
        self.field, self.limit = field, limit
        self.data = bytearray()
        self.count = 0
        self.finished = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._wanted = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._wanted = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._wanted = options.get(b"name") == self.field
        if self._wanted:
            self.count += 1

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._wanted or self.count > 1:
            return
        if len(self.data) + (end - start) > self.limit:
            raise too_large(self.limit)
        self.data += data[start:end]

    def _end(self) -> None:
        self.finished = True
