"""Hostile clients against a real `mediflow serve` (uvicorn, sockets): uploads that trickle their
body, request heads that never end or hold too many fields. None of them may lock out a normal
client; the server answers them 408/431 before any application code runs and its memory stays put.
Timings are reported by benchmarks/hostile_clients.py; here only outcomes are asserted (with a
generous bound on a normal client's wait)."""

from __future__ import annotations

import socket
import sys
import threading
import time

import httpx
import pytest
from conftest import jpeg_bytes, xray_like
from server_process import ServerProcess

from .test_upload_limits import bench, multipart, proc_kib

SLOW_CLIENTS = 40
FILM = jpeg_bytes(xray_like(1, seed=21, size=224))
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    s = ServerProcess(["--model", str(tiny_model), "--database-url", "none", "--header-timeout", "2"],
                      tmp_path_factory.mktemp("hostile") / "server.log").start()
    yield s
    s.stop()


def raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def upload_head(port: int, length: int) -> bytes:
    return (f"POST /api/vision/analyze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {bench.CONTENT_TYPE}"
            f"\r\nContent-Length: {length}\r\n\r\n").encode()


def read_status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {head!r}")
        head += chunk
    return int(head.split()[1])


class Trickle:
    """`n` uploads of a valid 1 MB multipart body that send their headers, then 3 bytes a second
    each; each reconnects when the server drops it."""

    def __init__(self, port: int, n: int):
        self.port, self.stop, self.dropped = port, threading.Event(), 0
        self.body = multipart(b"\xff" * 1_000_000)
        self.sent = [0] * n
        self.socks = [self._connect() for _ in range(n)]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            for i, sock in enumerate(self.socks):
                try:
                    sock.sendall(self.body[self.sent[i]:self.sent[i] + 3])
                    self.sent[i] += 3
                except OSError:
                    self.dropped += 1
                    sock.close()
                    self.sent[i] = 0
                    self.socks[i] = self._connect()

    def _connect(self) -> socket.socket:
        return raw(self.port, upload_head(self.port, len(self.body)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()


def normal_uploads(url: str, n: int) -> list[tuple[int, float]]:
    out = []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            t0 = time.monotonic()
            r = client.post(url + "/api/vision/analyze", files={"file": ("film.jpeg", FILM, "image/jpeg")})
            out.append((r.status_code, time.monotonic() - t0))
    return out


@pytest.mark.slow
def test_forty_trickling_uploads_do_not_lock_out_a_normal_client(server):
    attack = Trickle(server.port, SLOW_CLIENTS)
    try:
        time.sleep(1.5)  # every slow upload is admitted and trickling
        results = normal_uploads(server.url, 10)
        dropped = attack.dropped
    finally:
        attack.close()
    assert dropped == 0  # the slow uploads were open all along
    assert [status for status, _ in results] == [200] * 10
    assert max(seconds for _, seconds in results) < 10, results


def test_oversized_and_overlong_heads_are_refused_before_the_app(server):
    # One header line of 1 MiB: 431, connection closed.
    sock = raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    try:
        try:
            sock.sendall(b"a" * MiB)
        except OSError:
            pass  # the server hung up while we were still sending: also a refusal
        assert read_status(sock) == 431
    finally:
        sock.close()
    # 150 header fields of a few bytes each.
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
    with raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n") as sock:
        assert read_status(sock) == 431
    # Headers that stop arriving (--header-timeout 2).
    with raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n") as sock:
        t0 = time.monotonic()
        assert read_status(sock) == 408
        assert 1.5 < time.monotonic() - t0 < 10
    # A connection that never says anything is closed.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        assert sock.recv(1) == b""
    # A normal request with ordinary headers is still fine.
    assert httpx.get(server.url + "/health", headers={f"X-{i}": "v" * 100 for i in range(40)}).status_code == 200
    assert "Traceback" not in server.log()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc (Linux only)")
def test_three_huge_headers_leave_memory_and_other_uploads_alone(server):
    pid = server.proc.pid
    base = proc_kib(pid, "VmRSS")
    statuses: list[int | str] = []

    def huge_header() -> None:
        sock = raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            block = b"a" * MiB
            for _ in range(100):
                sock.sendall(block)
            statuses.append("sent all")
        except OSError:
            try:
                statuses.append(read_status(sock))
            except OSError:
                statuses.append("closed")
        finally:
            sock.close()

    threads = [threading.Thread(target=huge_header) for _ in range(3)]
    for t in threads:
        t.start()
    results = normal_uploads(server.url, 5)
    for t in threads:
        t.join(timeout=60)
    growth_mib = (proc_kib(pid, "VmRSS") - base) / 1024
    assert "sent all" not in statuses, statuses
    assert [status for status, _ in results] == [200] * 5
    assert max(seconds for _, seconds in results) < 5, results
    assert growth_mib < 50, growth_mib


@pytest.mark.slow
def test_upload_below_the_minimum_rate_gets_408(tiny_model, tmp_path):
    s = ServerProcess(["--model", str(tiny_model), "--database-url", "none", "--min-upload-rate", "1000"],
                      tmp_path / "server.log").start()
    try:
        body = multipart(FILM)
        sock = raw(s.port, upload_head(s.port, len(body)) + body[:100])
        sent = 100
        t0 = time.monotonic()
        try:
            while True:  # 3 bytes a second, until the server answers
                sock.settimeout(1.0)
                try:
                    status = read_status(sock)
                    break
                except TimeoutError:
                    sock.sendall(body[sent:sent + 3])
                    sent += 3
                assert time.monotonic() - t0 < 60
        finally:
            sock.close()
        assert status == 408 and 9 < time.monotonic() - t0 < 30
        # A client at full speed is not affected.
        assert normal_uploads(s.url, 1)[0][0] == 200
    finally:
        s.stop()
