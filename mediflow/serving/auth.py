"""API keys with names, the loopback rule for `mediflow serve`, and who a caller is.

Keys come from MEDIFLOW_API_KEYS ("name1:key1,name2:key2") and/or a file (MEDIFLOW_API_KEYS_FILE,
one `name:key` per line, `#` comments). When any key is set, every /api/* request must carry
`Authorization: Bearer <key>` (checked by dependencies.current_user); the key's name is who the
audit log and the reviews record.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from pathlib import Path

from fastapi.exception_handlers import http_exception_handler
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mediflow.errors import MediFlowError
from mediflow.serving.docs_page import is_docs_path

ANONYMOUS = "anonymous"
MIN_KEY_LENGTH = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@ -]{0,99}$")


class ApiKeyError(MediFlowError):
    """Malformed API key configuration."""


class ApiKeys:
    def __init__(self, keys: dict[str, str]):
        self._keys = dict(keys)  # name -> key

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def names(self) -> list[str]:
        return sorted(self._keys)

    def identify(self, token: str) -> str | None:
        """The name owning `token`, or None. Every key is compared, each in constant time."""
        found = None
        presented = token.encode()
        for name, key in self._keys.items():
            if hmac.compare_digest(presented, key.encode()):
                found = name
        return found


def parse_keys(text: str, source: str, *, separator: str = ",") -> dict[str, str]:
    keys: dict[str, str] = {}
    for n, raw in enumerate(text.split(separator), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"{source} entry {n}" if separator == "," else f"{source} line {n}"
        name, sep, key = entry.partition(":")
        name, key = name.strip(), key.strip()
        if not sep or not name or not key:
            raise ApiKeyError(f"{where}: expected 'name:key'")
        if not _NAME.match(name):
            raise ApiKeyError(f"{where}: key name {name!r} may hold only letters, digits, space and . _ @ -")
        if len(key) < MIN_KEY_LENGTH:
            raise ApiKeyError(f"{where}: the key for {name!r} is shorter than {MIN_KEY_LENGTH} characters")
        if name in keys:
            raise ApiKeyError(f"{where}: key name {name!r} appears twice")
        if key in keys.values():
            raise ApiKeyError(f"{where}: the key for {name!r} is also another name's key")
        keys[name] = key
    return keys


def load_api_keys(inline: str | None, path: str | None) -> ApiKeys | None:
    """Keys from the setting and the file together; None when neither is set (auth off)."""
    keys: dict[str, str] = {}
    if inline:
        keys.update(parse_keys(inline, "MEDIFLOW_API_KEYS"))
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ApiKeyError(f"API keys file {p}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiKeyError(f"API keys file {p}: cannot read ({exc})") from None
        for name, key in parse_keys(text, str(p), separator="\n").items():
            if name in keys or key in keys.values():
                raise ApiKeyError(f"API keys file {p}: {name!r} clashes with MEDIFLOW_API_KEYS")
            keys[name] = key
        if not keys:
            raise ApiKeyError(f"API keys file {p}: holds no 'name:key' line")
    return ApiKeys(keys) if keys else None


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_exposure(host: str, keys: ApiKeys | None, *, insecure: bool) -> None:
    """Refuse to serve a network address without API keys unless the operator insists."""
    if keys is None and not is_loopback(host) and not insecure:
        raise MediFlowError(f"refusing to listen on {host} without API keys: set MEDIFLOW_API_KEYS or "
                            "MEDIFLOW_API_KEYS_FILE, or pass --insecure")


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


MISSING_KEY = "missing API key: send the header 'Authorization: Bearer <key>'"
INVALID_KEY = "invalid API key"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for no header or another scheme."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def identify_caller(keys: ApiKeys | None, token: str | None) -> tuple[str, str | None]:
    """(the name the audit log gives the caller, why it is refused or None).

    No keys configured: everyone is 'anonymous'. Otherwise the key's name, or '(no key)' /
    '(invalid key)' with the reason for the 401."""
    if keys is None:
        return ANONYMOUS, None
    token = token.strip() if token else None
    if not token:
        return "(no key)", MISSING_KEY
    name = keys.identify(token)
    if name is None:
        return "(invalid key)", INVALID_KEY
    return name, None


class DocsKeyMiddleware:
    """/docs, its assets and /openapi.json need a key whenever the API does (the document maps every
    route). Not audited. A middleware rather than a dependency: the assets are a static mount and
    /openapi.json is FastAPI's own route."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_docs_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        keys: ApiKeys | None = scope["app"].state.api_keys
        _, denied = identify_caller(keys, bearer_token(Headers(scope=scope).get("authorization")))
        if denied is None:
            await self.app(scope, receive, send)
        else:
            await JSONResponse({"detail": denied}, status_code=401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def route_template(request: Request) -> str:
    """The matched route's template (e.g. /api/studies/{study_id}): what the audit log records,
    never the concrete path or a query string."""
    return getattr(request.scope.get("route"), "path", None) or request.url.path


def unchecked_caller_refusal(request: Request) -> JSONResponse | None:
    """The 401 for an /api request that failed before the routes' own key check
    (dependencies.current_user) could run: no route matched (404), the method did not (405), the
    JSON body did not parse (422). A caller without a valid key learns nothing about the routes."""
    if (request.method == "OPTIONS" or not is_api_path(request.url.path)
            or getattr(request.state, "actor", None) is not None):
        return None
    _, denied = identify_caller(request.app.state.api_keys, bearer_token(request.headers.get("authorization")))
    if denied is None:
        return None
    return JSONResponse({"detail": denied}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def no_such_route(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer to an HTTP error; a 401 instead of 404/405 for a caller without a valid key."""
    refusal = unchecked_caller_refusal(request) if exc.status_code in (404, 405) else None
    return refusal or await http_exception_handler(request, exc)
