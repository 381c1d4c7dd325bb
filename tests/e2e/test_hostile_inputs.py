"""Hostile input and exposure probes against a real `mediflow serve` (uvicorn, sockets), with its
study store on SQLite and on PostgreSQL: never a 500, bad values get a 4xx naming the problem
(not a database outage), and responses name no server path, library build or HTTP stack."""

from __future__ import annotations

import io
import json
import shutil
import socket

import httpx
import pydicom
import pytest
from conftest import png_bytes, xray_like
from db_fixtures import database_url  # noqa: F401  (fixture)
from server_process import ServerProcess
from serving.test_dicom_studies import dicom_film
from webapp_helpers import open_page

KEY = "k" * 24


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    """The tiny model with an evaluation file next to it that names absolute paths, as
    benchmarks/generalization.py writes them."""
    folder = tmp_path_factory.mktemp("model")
    model = folder / "tiny.pth"
    shutil.copy(tiny_model, model)
    (folder / "tiny.evaluation.json").write_text(json.dumps({
        "model": {"path": str(model), "sha256": "0" * 64, "architecture": "efficientnet_lite0"},
        "data": "/srv/hospital/films", "machine": "test machine", "validation": {"auc": 0.9}}))
    return folder


@pytest.fixture
def server(model_dir, database_url, tmp_path):  # noqa: F811 (fixture)
    s = ServerProcess(["--model", str(model_dir / "tiny.pth"), "--database-url", database_url,
                       "--store-images"], tmp_path / "server.log").start()
    yield s
    s.stop()


def upload(url: str, data: bytes, name: str = "film.png") -> httpx.Response:
    return httpx.post(url + "/api/vision/analyze", files={"file": (name, data, "application/octet-stream")},
                      timeout=60)


def assert_no_500(server: ServerProcess) -> None:
    log = server.log()
    assert "unexpected" not in log and "Traceback" not in log, log[-3000:]


def test_bad_values_get_4xx_naming_the_problem(server):
    url = server.url
    # A multipart boundary longer than the parser accepts.
    body = b"--" + b"b" * 257 + b"\r\n"
    r = httpx.post(url + "/api/vision/analyze", content=body, timeout=30,
                   headers={"Content-Type": "multipart/form-data; boundary=" + "b" * 257})
    assert r.status_code == 400 and "boundary" in r.json()["detail"]

    # Page offsets past a 64-bit integer.
    for path in ("/api/studies", "/api/studies/refused"):
        r = httpx.get(url + path, params={"offset": str(2**63)}, timeout=30)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "offset"]

    r = upload(url, png_bytes(xray_like(1, seed=5, size=128)))
    assert r.status_code == 200, r.text
    sid = r.json()["study_id"]
    review = f"{url}/api/studies/{sid}/review"
    # JSON can carry what no database stores: a lone surrogate, a NUL.
    for note, words in (("\\ud800", "surrogate"), ("\\u0000", "NUL")):
        r = httpx.post(review, content=b'{"label": "NORMAL", "note": "a' + note.encode() + b'"}',
                       headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 422, r.text
        assert words in r.text
    # An unknown label of 60 KB is named by a short excerpt, not echoed whole.
    r = httpx.post(review, json={"label": "X" * 60_000}, timeout=30)
    assert r.status_code == 422 and len(r.content) < 400 and "XXXX" in r.json()["detail"]
    r = httpx.post(review, json={"label": "NORMAL", "note": "Y" * 60_000}, timeout=30)
    assert r.status_code == 422 and len(r.content) < 600
    # The study is untouched and a proper review still works.
    assert httpx.get(f"{url}/api/studies/{sid}", timeout=30).json()["reviews"] == []
    assert httpx.post(review, json={"label": "NORMAL", "note": "fine"}, timeout=30).status_code == 200
    assert_no_500(server)


def test_dicom_with_nul_in_a_demographic_gets_its_finding(server):
    ds = pydicom.dcmread(io.BytesIO(dicom_film(pydicom.uid.generate_uid(), pydicom.uid.generate_uid())))
    ds.PatientSex = "M\x00F"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = upload(server.url, buf.getvalue(), "film.dcm")
    assert r.status_code == 200, r.text
    study = httpx.get(f"{server.url}/api/studies/{r.json()['study_id']}", timeout=30).json()
    assert study["patient_sex"] == "MF"
    assert_no_500(server)


def test_responses_name_no_paths_builds_or_server(server, model_dir):
    url = server.url
    card = httpx.get(url + "/api/model", timeout=30)
    evaluation = httpx.get(url + "/api/model/evaluation", timeout=30)
    assert card.status_code == 200 and evaluation.status_code == 200
    for r in (card, evaluation):
        assert str(model_dir) not in r.text and "/srv/hospital" not in r.text
        assert '"torch":' not in r.text  # the build (e.g. 2.14.1+cu130) under its library's name
    assert evaluation.json()["model"]["path"] == "tiny.pth"
    assert card.json()["sha256"] and card.json()["version"]

    sid = upload(url, png_bytes(xray_like(0, seed=6, size=128))).json()["study_id"]
    page = httpx.get(url + "/", timeout=30)
    asset = next(p for p in page.text.split('"') if p.startswith("/static/assets/"))
    for path in ("/health", "/api/model", f"/api/studies/{sid}/image", asset, "/", "/docs", "/openapi.json",
                 "/no/such/page"):
        r = httpx.get(url + path, timeout=30)
        assert "server" not in r.headers, path
        assert r.headers.get("x-content-type-options") == "nosniff", path

    docs = httpx.get(url + "/docs", timeout=30)
    assert docs.status_code == 200 and "default-src 'self'" in docs.headers["content-security-policy"]
    scripts = [p for p in docs.text.split('"') if p.endswith(".js") or p.endswith(".css")]
    assert scripts and all(p.startswith("/docs/") for p in scripts)
    for path in scripts:
        assert httpx.get(url + path, timeout=30).status_code == 200, path


def test_docs_page_renders_from_local_files_under_its_csp(server, browser):
    """Swagger UI draws every route from /openapi.json with nothing fetched from another origin and
    no CSP violation (open_page fails the test on any console error)."""
    requested: list[str] = []
    with open_page(browser) as page:
        page.on("request", lambda r: requested.append(r.url))
        page.goto(server.url + "/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        assert page.locator(".opblock").count() >= 5
    assert requested and all(u.startswith(server.url) or u.startswith("data:") for u in requested), requested


def test_docs_need_a_key_when_the_api_does(model_dir, tmp_path):
    s = ServerProcess(["--model", str(model_dir / "tiny.pth"), "--database-url", "none"], tmp_path / "server.log",
                      env={"MEDIFLOW_API_KEYS": f"tester:{KEY}"}).start()
    try:
        for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            assert httpx.get(s.url + path, timeout=30).status_code == 401, path
            r = httpx.get(s.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            assert r.status_code == 200, path
        assert httpx.get(s.url + "/redoc", timeout=30).status_code == 404
        # Every 503 says when to come back, even one that is not about load.
        r = httpx.get(s.url + "/api/studies", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    finally:
        s.stop()


def test_raw_garbage_is_never_a_500(server):
    """Requests that a well-behaved client never sends, on one socket each."""
    for request in (b"GET /api/studies?limit=-1&offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /api/studies/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /api/vision/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                    b"boundary=\"\"\r\nContent-Length: 0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(request)
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 4"), head[:200]
    assert_no_500(server)


def test_public_view_drops_builds_and_folders():
    from mediflow.serving.public import public_view

    card = {"export": {"torch": "2.14.1+cu130", "quantization": {"data": "/work/shared/data/x224"}},
            "backend": "onnx", "paths": ["C:\\models\\m.onnx", "~/m.pth", "relative/name"]}
    assert public_view(card) == {"export": {"quantization": {"data": "x224"}}, "backend": "onnx",
                                 "paths": ["m.onnx", "m.pth", "relative/name"]}


def test_public_view_reduces_paths_inside_sentences():
    from mediflow.serving.public import public_view

    msg = "fitted on another model: refit with mediflow fit-input-check --model /srv/models/m.pth (https://ex.org/a/b)"
    assert public_view({"problem": msg}) == {
        "problem": "fitted on another model: refit with mediflow fit-input-check --model m.pth (https://ex.org/a/b)"}
    assert public_view("see ./relative/path and ~/x/y.pth") == "see ./relative/path and y.pth"
