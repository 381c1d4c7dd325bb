"""Error answers that never repeat more than a short excerpt of what the client sent.

FastAPI's own 422 copies each offending input whole into `detail` (a 60 KB label comes back as
60 KB) and cannot encode a lone UTF-16 surrogate at all (a 500). These handlers answer the same
shape with the input cut to an excerpt and made printable.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mediflow.serving.auth import unchecked_caller_refusal

EXCERPT_CHARS = 40


def excerpt(value: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of `value`, with characters UTF-8 cannot encode (lone surrogates)
    and control characters written as escapes, and '...' when it was cut."""
    cut = value[:limit]
    safe = cut.encode("utf-8", "backslashreplace").decode("utf-8")
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in safe)
    return safe + ("..." if len(value) > limit else "")


def _safe_input(value: Any) -> Any:
    if isinstance(value, str):
        return excerpt(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return f"<{type(value).__name__}>"  # a whole object or list would repeat the body


async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 shape (`detail`: a list of {type, loc, msg, input}), inputs as excerpts; a 401
    instead when the body failed to parse before the caller's key was checked."""
    refusal = unchecked_caller_refusal(request)
    if refusal is not None:
        return refusal
    errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": excerpt(str(e.get("msg", "")), 200),
               **({"input": _safe_input(e["input"])} if "input" in e else {})}
              for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})
