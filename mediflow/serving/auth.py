"""API keys with names, the loopback rule for `mediflow serve`, and the access/audit middleware.

Keys come from MEDIFLOW_API_KEYS ("name1:key1,name2:key2") and/or a file (MEDIFLOW_API_KEYS_FILE,
one `name:key` per line, `#` comments). When any key is set, every /api/* request must carry
`Authorization: Bearer <key>`; the key's name is who the audit log and the reviews record.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import uuid
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediflow.errors import MediFlowError
from mediflow.serving.docs_page import is_docs_path

log = logging.getLogger("mediflow.serve")

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


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class AccessMiddleware:
    """Authenticates /api/* (when keys are set) and writes one audit row per /api call.

    The audit row holds the caller's key name, the method, the route template (e.g.
    /api/studies/{study_id}, never a query string), the status code and the study id: nothing
    from the request body. A plain ASGI middleware: Starlette's BaseHTTPMiddleware would run every
    upload through an extra task and memory stream (about a millisecond per analysis).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_docs_path(scope["path"]):
            await self._docs(scope, receive, send)
            return
        if scope["type"] != "http" or not is_api_path(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        keys: ApiKeys | None = request.app.state.api_keys
        denied: str | None = None
        if keys is None:
            actor = ANONYMOUS
        elif (token := _bearer(request)) is None:
            actor, denied = "(no key)", "missing API key: send the header 'Authorization: Bearer <key>'"
        elif (name := keys.identify(token)) is None:
            actor, denied = "(invalid key)", "invalid API key"
        else:
            actor = name
        request.state.actor = actor
        status: list[int] = []

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                # Study data must not linger in browser or proxy caches.
                MutableHeaders(scope=message).setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            if denied:
                await _unauthorized(denied)(scope, receive, send_no_store)
            else:
                await self.app(scope, receive, send_no_store)
        except Exception:
            await self._audit(request, actor, 500)
            raise
        await self._audit(request, actor, status[0] if status else 500)

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The API's documentation needs a key whenever the API does (it maps every route); not audited."""
        keys: ApiKeys | None = scope["app"].state.api_keys
        if keys is None:
            await self.app(scope, receive, send)
            return
        token = _bearer(Request(scope))
        if token is None:
            await _unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")(scope, receive, send)
        elif keys.identify(token) is None:
            await _unauthorized("invalid API key")(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _audit(self, request: Request, actor: str, status_code: int) -> None:
        store = request.app.state.store
        if store is None or (status_code == 200 and getattr(request.state, "audited", False)):
            return  # no store, or the handler already wrote this call's row with its own data
        if getattr(request.state, "storage_failed", False):
            return  # the store just failed this request (and it was logged): the row would wait and fail too
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


def route_template(request: Request) -> str:
    """The matched route's template (e.g. /api/studies/{study_id}): what the audit log records,
    never the concrete path or a query string."""
    return getattr(request.scope.get("route"), "path", None) or request.url.path


def _path_uuid(params: dict) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(params["study_id"]))
    except (KeyError, ValueError):
        return None
