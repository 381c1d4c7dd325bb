"""Upload limits on a real `mediflow serve` process (uvicorn, real sockets): uploads share a memory
budget charged by the bytes they have sent; 503 + Retry-After beyond it; 408 for a body that does
not arrive in time; server memory bounded by the limit, not by the number of clients.

Clients are raw sockets so that a test controls exactly how much of a body has been sent. Those
that must be admitted send `Expect: 100-continue`: uvicorn answers `100 Continue` only once the
application starts reading the body, so receiving it proves the upload was admitted.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, png_bytes, xray_like
from server_process import ServerProcess

# The raw-socket client and the /proc readers are shared with benchmarks/upload_memory.py.
_spec = importlib.util.spec_from_file_location("upload_memory_benchmark", REPO / "benchmarks" / "upload_memory.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
RawUpload, multipart, proc_kib = bench.RawUpload, bench.multipart, bench.proc_kib

MiB = 1024 * 1024
LIMIT = 2
RETRY_AFTER = 7


def analyze(url: str, image: bytes) -> httpx.Response:
    return httpx.post(url + "/api/vision/analyze", files={"file": ("film.png", image, "image/png")}, timeout=60)


def start_server(tiny_model: Path, tmp_path: Path, *flags: str) -> ServerProcess:
    # No store: nothing here is about studies, and the default store would land in the user's data folder.
    server = ServerProcess(["--model", str(tiny_model), "--database-url", "none", *flags], tmp_path / "server.log")
    return server.start()


@pytest.fixture(scope="module")
def limited_server(tiny_model, tmp_path_factory):
    server = start_server(tiny_model, tmp_path_factory.mktemp("limits"), "--max-uploads-in-flight", str(LIMIT),
                          "--retry-after", str(RETRY_AFTER), "--upload-timeout", "60")
    yield server
    server.stop()


def assert_busy(status: int, headers: dict[str, str], body: dict) -> None:
    assert status == 503, (status, body)
    assert headers.get("retry-after") == str(RETRY_AFTER)
    assert "busy" in body["detail"] and f"retry in {RETRY_AFTER} seconds" in body["detail"]


@pytest.mark.slow
def test_trickling_uploads_hold_no_slot(limited_server):
    """Slots are earned by the bytes sent, not by headers: uploads that trickle their body do not
    lock out a client that sends its film at once, however many of them there are."""
    films = [png_bytes(xray_like(i % 2, seed=90 + i, size=256)) for i in range(2 * LIMIT)]
    slow = [RawUpload(limited_server.port, multipart(f), expect_continue=True) for f in films]
    try:
        for upload in slow:
            assert upload.read_head()[0] == 100  # admitted: the app is reading its body
            upload.sock.sendall(upload.body[:len(upload.body) // 2])  # and it trickles

        r = analyze(limited_server.url, films[0])
        assert r.status_code == 200 and r.json()["prediction"] in ("NORMAL", "PNEUMONIA"), r.text
        # Everything that is not an upload is still answered.
        assert httpx.get(limited_server.url + "/health", timeout=30).json()["status"] == "ok"
        assert httpx.get(limited_server.url + "/api/model", timeout=30).status_code == 200

        for upload in slow:
            upload.sock.sendall(upload.body[len(upload.body) // 2:])
        for upload in slow:
            status, _, body = upload.read_response()
            assert status == 200 and body["prediction"] in ("NORMAL", "PNEUMONIA"), body
    finally:
        for upload in slow:
            upload.close()


def test_bodies_of_other_routes_are_capped(limited_server):
    big = b"{" + b" " * (128 * 1024) + b"}"
    r = httpx.post(limited_server.url + "/api/studies/00000000-0000-0000-0000-000000000000/review", content=big,
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "64 KB" in r.json()["detail"]
    chunked = httpx.post(limited_server.url + "/api/studies/00000000-0000-0000-0000-000000000000/review",
                         content=iter([b'{"label": "NORMAL"}']), headers={"Content-Type": "application/json"},
                         timeout=30)
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["detail"]


@pytest.mark.slow
def test_upload_that_does_not_arrive_in_time_gets_408(tiny_model, thread_server):
    from mediflow.inference.predictor import Predictor
    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    settings = Settings(database_url=None, max_uploads_in_flight=1, upload_timeout_s=1.5)
    url = thread_server(create_app(settings, predictor=Predictor.load(tiny_model, backend="torch")))
    film = png_bytes(xray_like(0, seed=5, size=128))
    slow = RawUpload(int(url.rsplit(":", 1)[1]), multipart(film), expect_continue=True)
    try:
        assert slow.read_head()[0] == 100
        slow.sock.sendall(slow.body[:100])
        t0 = time.monotonic()
        assert analyze(url, film).status_code == 200  # a trickle holds no slot
        status, headers, body = slow.read_response()
        waited = time.monotonic() - t0
        assert status == 408 and "1.5 seconds" in body["detail"], body
        assert headers.get("connection") == "close" and slow.sock.recv(1) == b""  # and the server hung up
        assert waited < 30, waited
    finally:
        slow.close()
    r = analyze(url, film)
    assert r.status_code == 200, r.text


# -- memory ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak RSS from /proc (Linux only)")
def test_server_memory_is_bounded_by_the_limit_not_by_the_clients(limited_server):
    """LIMIT clients hold ~17.6 MiB uploads open while REFUSED more send theirs whole. Without the
    limit the server would hold (LIMIT + REFUSED) x 17.6 MiB; with it, its peak RSS grows by less
    than LIMIT x 2 x 20 MiB (each body plus the parser's copy) + 24 MiB."""
    refused_clients = 6
    body = multipart(bench.big_png(xray_like(1, seed=3, size=512)))
    pid = limited_server.proc.pid
    bench.reset_peak_rss(pid)
    base = proc_kib(pid, "VmRSS")

    held = [RawUpload(limited_server.port, body, expect_continue=True) for _ in range(LIMIT)]
    answers: list[tuple[int, dict[str, str], dict]] = []
    try:
        for upload in held:
            assert upload.read_head()[0] == 100
            upload.sock.sendall(body[:-64])  # everything but the closing boundary

        def push_whole_body() -> None:
            upload = RawUpload(limited_server.port, body, expect_continue=False)
            try:
                upload.sock.sendall(body)
                answers.append(upload.read_response())
            finally:
                upload.close()

        threads = [threading.Thread(target=push_whole_body) for _ in range(refused_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        # The held bodies are in the server once its RSS has taken them in (or after 10 s).
        deadline = time.monotonic() + 10
        while proc_kib(pid, "VmRSS") - base < LIMIT * len(body) // 1024 * 0.95 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        peak_mib = (proc_kib(pid, "VmHWM") - base) / 1024

        for upload in held:
            upload.sock.sendall(body[-64:])
        for upload in held:
            status, _, result = upload.read_response()
            assert status == 200 and result["prediction"] in ("NORMAL", "PNEUMONIA"), result
    finally:
        for upload in held:
            upload.close()

    assert len(answers) == refused_clients
    for answer in answers:
        assert_busy(*answer)
    bound_mib = LIMIT * 2 * 20 + 24
    unbounded_mib = (LIMIT + refused_clients) * len(body) / MiB
    print(f"\npeak RSS growth {peak_mib:.0f} MiB with {LIMIT} of {LIMIT + refused_clients} uploads of "
          f"{len(body) / MiB:.1f} MiB admitted (bound {bound_mib} MiB; unbounded >= {unbounded_mib:.0f} MiB)")
    assert LIMIT * len(body) / MiB * 0.9 < peak_mib < bound_mib


# -- settings --------------------------------------------------------------------------------------
def test_limit_flags_and_environment_become_settings(monkeypatch):
    from mediflow.cli import build_parser
    from mediflow.commands.serve import settings_from_args
    from mediflow.errors import MediFlowError

    def settings(*argv: str):
        return settings_from_args(build_parser().parse_args(["serve", *argv]))

    s = settings("--max-uploads-in-flight", "3", "--retry-after", "9", "--upload-timeout", "2.5")
    assert (s.max_uploads_in_flight, s.retry_after_s, s.upload_timeout_s) == (3, 9, 2.5)
    monkeypatch.setenv("MEDIFLOW_MAX_UPLOADS_IN_FLIGHT", "4")
    monkeypatch.setenv("MEDIFLOW_RETRY_AFTER_S", "11")
    s = settings("--retry-after", "2")
    assert (s.max_uploads_in_flight, s.retry_after_s) == (4, 2)
    s = settings("--min-upload-rate", "500", "--header-timeout", "3", "--db-timeout", "4.5")
    assert (s.min_upload_rate, s.header_timeout_s, s.db_timeout_s) == (500, 3, 4.5)
    for bad in (["--max-uploads-in-flight", "0"], ["--retry-after", "0"], ["--upload-timeout", "-1"],
                ["--min-upload-rate", "-1"], ["--header-timeout", "0"], ["--db-timeout", "0"]):
        with pytest.raises(MediFlowError, match="^invalid setting"):
            settings(*bad)
