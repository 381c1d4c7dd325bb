"""Hostile-client benchmark: a normal client's upload latency beside slow uploads, huge request
heads and a burst of parallel clients, against a real `mediflow serve` (uvicorn, 127.0.0.1, the
bundled model, no study store), plus the cost of the bounded HTTP protocol against plain uvicorn.

Rows:
- baseline: the normal client alone (sequential uploads of one full-resolution JPEG);
- slow clients: the same while SLOW connections send an upload's headers and then 3 bytes/s each
  (reconnecting when dropped);
- big headers: the same while 3 connections each send a request with a 100 MiB header line;
- load: CLIENTS parallel clients x UPLOADS uploads each, honouring Retry-After on a 503;
- protocol: p50 of plain uvicorn (httptools, no head bounds) and of `mediflow serve` on the same app,
  interleaved requests, and their ratio.
Each row gives the normal (or load) client's p50/p95/max latency, its 200s and 503s, and the server's
RSS before and its peak during the row.

    PYTHONPATH=$PWD python benchmarks/hostile_clients.py [--uploads 40] [--slow 40] [--header-mib 100]
        [--clients 32] [--per-client 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("upload_memory", REPO / "benchmarks" / "upload_memory.py")
um = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(um)

MiB = 1024 * 1024
DEFAULT_FULLRES = REPO.parent / "shared" / "data" / "fullres_samples"
PLAIN_UVICORN = """
import sys, uvicorn
from mediflow.serving.app import create_app
from mediflow.serving.settings import Settings
uvicorn.run(create_app(Settings(database_url=None)), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cmd: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIFLOW_")}
        env["PYTHONPATH"] = str(REPO)
        self.proc = subprocess.Popen([sys.executable, *cmd, str(self.port)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"{cmd} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def film() -> bytes:
    files = sorted(DEFAULT_FULLRES.rglob("*.jpeg")) if DEFAULT_FULLRES.is_dir() else []
    if not files:
        sys.exit(f"no full-resolution JPEGs under {DEFAULT_FULLRES} (see ../shared/data/README.md)")
    return files[0].read_bytes()


def uploads(url: str, data: bytes, n: int, honour_retry: bool = False) -> list[tuple[int, float]]:
    """n sequential uploads; (final status, seconds) each. With honour_retry a 503 is retried after
    its Retry-After, and the time includes the waits."""
    out = []
    with httpx.Client(timeout=120) as client:
        for _ in range(n):
            t0 = time.monotonic()
            while True:
                r = client.post(url + "/api/vision/analyze", files={"file": ("film.jpeg", data, "image/jpeg")})
                if r.status_code != 503 or not honour_retry:
                    break
                time.sleep(float(r.headers.get("retry-after", "1")))
            out.append((r.status_code, time.monotonic() - t0))
    return out


def trickle(port: int, n: int, stop: threading.Event) -> None:
    body = um.multipart(b"\xff" * 1_000_000)
    head = (f"POST /api/vision/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: {um.CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    def connect() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(head)
        return s

    socks, sent = [connect() for _ in range(n)], [0] * n
    while not stop.wait(1.0):
        for i, s in enumerate(socks):
            try:
                s.sendall(body[sent[i]:sent[i] + 3])
                sent[i] += 3
            except OSError:
                s.close()
                socks[i], sent[i] = connect(), 0
    for s in socks:
        s.close()


def big_headers(port: int, mib: int, stop: threading.Event) -> None:
    """3 connections, each sending a request whose one header line is `mib` MiB long, again and
    again until `stop` (a refused one reconnects)."""
    def one() -> None:
        block = b"a" * MiB
        while not stop.is_set():
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(mib):
                    s.sendall(block)
            except OSError:
                pass  # refused (431) and closed by the server
            finally:
                s.close()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def row(name: str, results: list[tuple[int, float]], server: Server, rss0: int) -> dict:
    ms = np.array([t for _, t in results]) * 1000
    return {"row": name, "n": len(results), "ok": sum(s == 200 for s, _ in results),
            "busy": sum(s == 503 for s, _ in results), "other": sum(s not in (200, 503) for s, _ in results),
            "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "max": ms.max(),
            "rss0": rss0 / 1024, "peak": um.proc_kib(server.proc.pid, "VmHWM") / 1024}


def with_attack(server: Server, data: bytes, n: int, attack, arg: int) -> list[tuple[int, float]]:
    stop = threading.Event()
    thread = threading.Thread(target=attack, args=(server.port, arg, stop), daemon=True)
    thread.start()
    time.sleep(2.0)  # the attack is under way
    try:
        return uploads(server.url, data, n)
    finally:
        stop.set()
        thread.join(timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=40, help="normal client's uploads per row")
    ap.add_argument("--slow", type=int, default=40, help="slow connections")
    ap.add_argument("--header-mib", type=int, default=100, help="size of each of the 3 huge headers")
    ap.add_argument("--clients", type=int, default=32, help="parallel clients of the load row")
    ap.add_argument("--per-client", type=int, default=10, help="uploads per client of the load row")
    args = ap.parse_args()
    data = film()
    server = Server(["-m", "mediflow", "serve", "--database-url", "none", "--port"])
    rows = []
    try:
        pid = server.proc.pid
        uploads(server.url, data, 5)  # warm
        for name, run in (
            ("baseline", lambda: uploads(server.url, data, args.uploads)),
            (f"{args.slow} slow clients (headers, then 3 B/s)",
             lambda: with_attack(server, data, args.uploads, trickle, args.slow)),
            (f"3 x {args.header_mib} MiB header",
             lambda: with_attack(server, data, args.uploads, big_headers, args.header_mib)),
        ):
            um.reset_peak_rss(pid)
            rss0 = um.proc_kib(pid, "VmRSS")
            rows.append(row(name, run(), server, rss0))
        um.reset_peak_rss(pid)
        rss0 = um.proc_kib(pid, "VmRSS")
        with ThreadPoolExecutor(args.clients) as pool:
            load = [r for rs in pool.map(lambda _: uploads(server.url, data, args.per_client, honour_retry=True),
                                         range(args.clients)) for r in rs]
        rows.append(row(f"load: {args.clients} clients x {args.per_client}, honouring Retry-After", load, server,
                        rss0))
        plain = Server(["-c", PLAIN_UVICORN])
        try:
            a, b = [], []
            for _ in range(max(1, args.uploads // 10)):
                a += uploads(plain.url, data, 10)
                b += uploads(server.url, data, 10)
            pa, pb = (np.percentile([t for _, t in x], 50) * 1000 for x in (a, b))
        finally:
            plain.stop()
    finally:
        server.stop()

    cpu = platform.processor() or platform.machine()
    print(f"\n{os.cpu_count()} CPUs ({cpu}), bundled model, `mediflow serve` defaults, no store, "
          f"one {len(data) / 1024:.0f} KB JPEG\n")
    print("| row | uploads | 200 | 503 | other | p50 ms | p95 ms | max ms | RSS before MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['n']} | {r['ok']} | {r['busy']} | {r['other']} | {r['p50']:.0f} | {r['p95']:.0f} "
              f"| {r['max']:.0f} | {r['rss0']:.0f} | {r['peak']:.0f} |")
    print(f"\nprotocol: plain uvicorn p50 {pa:.0f} ms, mediflow serve (bounded heads) p50 {pb:.0f} ms, "
          f"ratio {pb / pa:.2f} ({len(a)} interleaved uploads each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
