"""Failing storage under a real `mediflow serve`: a hung PostgreSQL (SIGSTOP), a stopped one and a
full disk. Each costs a request at most the configured --db-timeout, answers 503 with Retry-After,
writes one log line naming the failure's kind, shows in /health, and nothing answered 200 is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import environment_missing, png_bytes, xray_like
from pg_cluster import PostgresCluster
from server_process import ServerProcess
from sqlalchemy import text

DB_TIMEOUT = 2.0
RETRY_AFTER = 3
# Time beyond --db-timeout that a refused request may take (a loaded 2-core machine, the pool's
# own wait, the answer itself).
SLACK_S = 2.0
FILM = png_bytes(xray_like(1, seed=11, size=128))


@pytest.fixture
def cluster():
    c = PostgresCluster().start()
    yield c
    c.remove()


def serve(tmp_path: Path, tiny_model: Path, url: str) -> ServerProcess:
    return ServerProcess(["--model", str(tiny_model), "--database-url", url, "--db-timeout", str(DB_TIMEOUT),
                          "--retry-after", str(RETRY_AFTER)], tmp_path / "server.log").start()


def timed(method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.request(method, url, timeout=60, **kwargs)
    return r, time.monotonic() - t0


def analyze(server: ServerProcess) -> tuple[httpx.Response, float]:
    return timed("POST", server.url + "/api/vision/analyze", files={"file": ("film.png", FILM, "image/png")})


def assert_unavailable(r: httpx.Response, elapsed: float, words: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after") == str(RETRY_AFTER)
    assert words in r.json()["detail"], r.json()
    assert elapsed < DB_TIMEOUT + SLACK_S, elapsed


def studies_total(server: ServerProcess) -> int:
    return httpx.get(server.url + "/api/studies", params={"status": "all"}, timeout=60).json()["total"]


def wait_ready(server: ServerProcess, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(server.url + "/health", timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.3)


def test_hung_postgres_costs_a_request_at_most_the_timeout(cluster, tiny_model, tmp_path):
    server = serve(tmp_path, tiny_model, cluster.url)
    try:
        saved = sum(analyze(server)[0].status_code == 200 for _ in range(3))
        assert saved == 3
        cluster.signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                assert_unavailable(*analyze(server), "did not answer in time")
            assert_unavailable(*timed("GET", server.url + "/api/studies"), "did not answer in time")
            health, elapsed = timed("GET", server.url + "/health")
            assert health.status_code == 503 and health.headers.get("retry-after") == str(RETRY_AFTER)
            assert health.json()["store"] == {"status": "failing", "problem": "timeout"}
            assert health.json()["model_loaded"] is True and elapsed < DB_TIMEOUT + SLACK_S
            # The process itself is alive.
            assert httpx.get(server.url + "/health/live", timeout=30).status_code == 200
        finally:
            cluster.signal(signal.SIGCONT)
        assert wait_ready(server).status_code == 200
        r, _ = analyze(server)
        assert r.status_code == 200, r.text
        saved += 1
        # Nothing half-written: the studies are exactly the uploads answered 200.
        assert studies_total(server) == saved
        log = server.log()
        assert log.count("storage failure (timeout)") >= 4
        assert "Traceback" not in log and "unexpected" not in log
    finally:
        server.stop()


def test_stopped_postgres_is_an_outage_in_health_and_log(cluster, tiny_model, tmp_path):
    server = serve(tmp_path, tiny_model, cluster.url)
    try:
        assert analyze(server)[0].status_code == 200
        cluster.stop()
        assert_unavailable(*analyze(server), "unavailable")
        health = httpx.get(server.url + "/health", timeout=30)
        assert health.status_code == 503 and health.json()["store"]["problem"] == "unavailable"
        cluster.start()
        assert wait_ready(server).status_code == 200
        assert analyze(server)[0].status_code == 200
        assert studies_total(server) == 2
        assert "storage failure (unavailable)" in server.log()
    finally:
        server.stop()


def test_bad_values_on_postgres_are_not_an_outage(cluster):
    """The classification the API's answers rest on, on real PostgreSQL errors."""
    from mediflow.store.db import Store, failure_kind

    store = Store(cluster.url, timeout_s=DB_TIMEOUT)
    try:
        for statement, params in (("SELECT 1/0", {}), ("SELECT 'a' || chr(0)", {}), ("SELECT :v", {"v": "a\x00"}),
                                  ("SELECT 9223372036854775807::bigint + 1", {})):
            with pytest.raises(Exception) as caught, store.session() as s:
                s.execute(text(statement), params)
            assert failure_kind(caught.value) == "bad input", statement
        with pytest.raises(Exception) as caught, store.session() as s:
            s.execute(text("SELECT pg_sleep(5)"))
        assert failure_kind(caught.value) == "timeout"  # the server's statement_timeout
    finally:
        store.dispose()


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs: a disk that can be filled without touching the machine's own."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        environment_missing("the full-disk test mounts a tmpfs, which needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_shows_in_health_and_log_and_recovers(small_disk, tiny_model, tmp_path):
    server = serve(tmp_path, tiny_model, f"sqlite:///{small_disk / 'studies.db'}")
    filler = small_disk / "filler"
    try:
        assert analyze(server)[0].status_code == 200
        with open(filler, "wb") as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        r, elapsed = analyze(server)
        assert_unavailable(r, elapsed, "disk is full")
        health = httpx.get(server.url + "/health", timeout=30)
        assert health.status_code == 503 and health.json()["store"]["problem"] == "disk full"
        assert "storage failure (disk full)" in server.log()
        filler.unlink()
        assert wait_ready(server).status_code == 200
        assert analyze(server)[0].status_code == 200
        assert studies_total(server) == 2
    finally:
        server.stop()
