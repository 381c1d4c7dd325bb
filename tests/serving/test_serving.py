"""The service in-process: the upload reader's size cap, no disk writes, settings, CORS default,
review cut-off, warm-up and the page's HTML."""

from __future__ import annotations

import asyncio
import io
import re
import tempfile

import numpy as np
import pytest
from conftest import jpeg_bytes, xray_like
from fastapi import HTTPException
from fastapi.testclient import TestClient
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mediflow import DISCLAIMER
from mediflow.inference.predictor import Predictor
from mediflow.serving import app as app_module
from mediflow.serving.app import create_app
from mediflow.serving.settings import Settings
from mediflow.serving.upload import FRAMING_ALLOWANCE, read_file_field

BOUNDARY = b"unitboundary"


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    return Predictor.load(tiny_model)


def multipart_request(receive, headers: dict[str, str] | None = None) -> Request:
    hdrs = {"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}", **(headers or {})}
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()]}
    return Request(scope, receive)


def test_upload_reader_stops_reading_at_the_limit():
    """An endless upload is cut off after about `limit` bytes: it is never buffered whole."""
    limit, chunk = 1024 * 1024, 64 * 1024
    consumed = 0

    async def endless_receive():
        nonlocal consumed
        if consumed == 0:
            body = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        else:
            body = b"\xff" * chunk
        consumed += len(body)
        return {"type": "http.request", "body": body, "more_body": True}

    with pytest.raises(HTTPException) as err:
        asyncio.run(read_file_field(multipart_request(endless_receive), "file", limit))
    assert err.value.status_code == 413 and "1 MB" in err.value.detail
    assert limit < consumed <= limit + FRAMING_ALLOWANCE + chunk


def test_upload_reader_refuses_a_large_content_length_without_reading():
    async def receive():
        raise AssertionError("the body must not be read")

    request = multipart_request(receive, {"content-length": str(50 * 1024 * 1024)})
    with pytest.raises(HTTPException) as err:
        asyncio.run(read_file_field(request, "file", 20 * 1024 * 1024))
    assert err.value.status_code == 413


class DiskTouched(AssertionError):
    pass


@pytest.fixture
def no_temp_files(monkeypatch):
    """Every way the standard library creates a temporary file raises, as does rolling a spooled file."""
    def refuse(*args, **kwargs):
        raise DiskTouched("an upload was about to be written to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)


def big_xray_png() -> bytes:
    """~3 MB: well past Starlette's 1 MB spool threshold."""
    noise = np.random.default_rng(0).integers(0, 256, (1800, 1800), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, mode="L").save(buf, format="PNG", compress_level=0)
    assert len(buf.getvalue()) > 3 * 1024 * 1024
    return buf.getvalue()


def test_the_no_disk_tripwire_catches_starlettes_default_form_parser(no_temp_files):
    # Without this, the test below could pass because the tripwire never fires.
    async def form_endpoint(request: Request):
        form = await request.form()
        return JSONResponse({"size": len(await form["file"].read())})

    client = TestClient(Starlette(routes=[Route("/", form_endpoint, methods=["POST"])]))
    with pytest.raises(DiskTouched):
        client.post("/", files={"file": ("x.png", big_xray_png(), "image/png")})


def test_uploads_are_never_written_to_disk(no_temp_files, predictor):
    with TestClient(create_app(Settings(), predictor=predictor)) as client:
        r = client.post("/api/vision/analyze", files={"file": ("big.png", big_xray_png(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["disclaimer"] == DISCLAIMER


@pytest.mark.parametrize("review_below", [0.0, 1.0])
def test_review_cut_off_comes_from_settings(tiny_model, review_below):
    app = create_app(Settings(model_path=str(tiny_model), review_below=review_below))
    with TestClient(app) as client:
        body = client.post("/api/vision/analyze", files={"file": ("x.jpeg", jpeg_bytes(xray_like(1, 2, 96)))}).json()
        assert client.get("/api/model").json()["review_below_confidence"] == review_below
    assert body["needs_review"] is (review_below == 1.0)


def test_size_limit_comes_from_settings(predictor):
    with TestClient(create_app(Settings(max_upload_bytes=256 * 1024), predictor=predictor)) as client:
        small = client.post("/api/vision/analyze", files={"file": ("x.jpeg", jpeg_bytes(xray_like(0, 1, 64)))})
        big = client.post("/api/vision/analyze", files={"file": ("x.jpeg", b"\xff\xd8\xff" + b"\0" * 300_000)})
    assert small.status_code == 200
    assert big.status_code == 413 and big.json()["detail"] == "upload is larger than the 256 KB limit"


def test_cors_default_is_same_origin_only(predictor):
    with TestClient(create_app(Settings(), predictor=predictor)) as client:
        simple = client.get("/api/model", headers={"Origin": "https://elsewhere.example"})
        preflight = client.options("/api/vision/analyze", headers={
            "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in preflight.headers


def test_model_is_warmed_up_once_at_start_up(predictor, monkeypatch):
    calls = []
    real = app_module.warm_up
    monkeypatch.setattr(app_module, "warm_up", lambda p: calls.append(p) or real(p))
    with TestClient(create_app(Settings(), predictor=predictor)) as client:
        assert calls == [predictor]
        client.post("/api/vision/analyze", files={"file": ("x.jpeg", jpeg_bytes(xray_like(0, 1, 64)))})
    assert calls == [predictor]


def test_page_is_served_with_the_disclaimer_and_a_strict_policy(predictor):
    with TestClient(create_app(Settings(max_upload_bytes=5 * 1024 * 1024), predictor=predictor)) as client:
        page = client.get("/")
        routes = [client.get(path) for path in ("/worklist", "/model")]
        script_src = re.search(r'<script type="module" crossorigin src="(/static/assets/[^"]+\.js)"', page.text)
        style_href = re.search(r'<link rel="stylesheet" crossorigin href="(/static/assets/[^"]+\.css)"', page.text)
        assert script_src and style_href, page.text
        script = client.get(script_src.group(1))
        style = client.get(style_href.group(1))
        raw = client.get("/static/index.html")  # only the filled-in page is served, with its CSP
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'<meta name="mediflow-disclaimer" content="{DISCLAIMER}">' in page.text
    assert "{{" not in page.text
    assert '<meta name="mediflow-max-upload" content="5 MB">' in page.text
    assert '<meta name="mediflow-max-upload-bytes" content="5242880">' in page.text
    # No inline script or style anywhere: the strict policy below needs none.
    assert "<script>" not in page.text and "<style" not in page.text and " style=" not in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for r in routes:  # client-side routes of the same app
        assert r.status_code == 200 and r.text == page.text
        assert r.headers["content-security-policy"] == policy
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]
    assert raw.status_code == 404


# -- settings ------------------------------------------------------------------------------------

def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("MEDIFLOW_CORS_ORIGINS", "https://a.example, https://b.example:8443/")
    monkeypatch.setenv("MEDIFLOW_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("MEDIFLOW_REVIEW_BELOW", "0.8")
    s = Settings()
    assert s.cors_origins == ["https://a.example", "https://b.example:8443"]
    assert s.max_upload_bytes == 1000 and s.review_below == 0.8
    monkeypatch.setenv("MEDIFLOW_CORS_ORIGINS", '["https://c.example"]')
    assert Settings().cors_origins == ["https://c.example"]


def test_settings_defaults():
    s = Settings(_env_file=None)
    assert s.max_upload_bytes == 20 * 1024 * 1024
    assert s.cors_origins == [] and s.review_below == 0.70 and s.host == "127.0.0.1"


@pytest.mark.parametrize("origins", [["*"], ["https://*.example.org"], ["ris.example.org"]])
def test_wildcard_or_malformed_cors_origins_are_refused(origins):
    with pytest.raises(ValueError):
        Settings(cors_origins=origins)
