"""Upload memory benchmark: peak server RSS while many clients hold ~17.6 MiB uploads open at once.

For each `--max-uploads-in-flight` value it starts a real `mediflow serve` process, opens CLIENTS
uploads of the same ~17.6 MiB PNG at once (each sends all but the last 64 bytes of its body and
waits), measures the growth of the server's peak RSS (VmHWM, reset before the run) and then lets the
admitted uploads finish. A limit at least as large as CLIENTS shows what the server would hold
without one. Linux only (reads /proc).

    PYTHONPATH=$PWD python benchmarks/upload_memory.py --model M.pth [--clients 8] [--limits 2,4,8]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

MiB = 1024 * 1024
BOUNDARY = "mediflow-upload-memory"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
REPO = Path(__file__).resolve().parent.parent


def multipart(image: bytes, name: str = "film.png") -> bytes:
    """A multipart/form-data body (boundary BOUNDARY) whose one `file` field holds `image`."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def big_png(film: Image.Image, side: int = 4300) -> bytes:
    """`film` resized to side x side grayscale, as a PNG stored without compression: about
    side^2 bytes (4300: 17.6 MiB, under the default 20 MB limit)."""
    buf = io.BytesIO()
    film.convert("L").resize((side, side)).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


class RawUpload:
    """One POST /api/vision/analyze on its own socket, sent piece by piece by the caller.

    With expect_continue the headers carry `Expect: 100-continue`; uvicorn answers `100 Continue`
    only when the application starts reading the body, so receiving it means the upload was admitted.
    """

    def __init__(self, port: int, body: bytes, *, expect_continue: bool, timeout: float = 60):
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        head = (f"POST /api/vision/analyze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n" + ("Expect: 100-continue\r\n" if expect_continue else "") + "\r\n")
        self.sock.sendall(head.encode())

    def read_head(self) -> tuple[int, dict[str, str]]:
        """Status and lower-cased headers of the next response (interim or final); reads nothing past them.
        Raises ConnectionError when the server closes the connection first."""
        raw = b""
        while not raw.endswith(b"\r\n\r\n"):
            byte = self.sock.recv(1)
            if not byte:
                raise ConnectionError(f"connection closed after {raw!r}")
            raw += byte
        status_line, *lines = raw.decode("latin-1").strip().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers

    def read_response(self) -> tuple[int, dict[str, str], dict]:
        """Status, headers and JSON body of the final response."""
        status, headers = self.read_head()
        length = int(headers["content-length"])
        body = b""
        while len(body) < length:
            chunk = self.sock.recv(length - len(body))
            if not chunk:
                raise ConnectionError("connection closed inside the response body")
            body += chunk
        return status, headers, json.loads(body)

    def close(self) -> None:
        self.sock.close()


def proc_kib(pid: int, field: str) -> int:
    """A /proc/PID/status field in KiB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0, same user)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def hold_uploads(port: int, pid: int, body: bytes, clients: int) -> dict:
    """`clients` uploads of `body` at once: each waits for `100 Continue` (admitted) or a final answer
    (refused) for up to 5 s, an admitted one then sends all but the last 64 bytes. Once the server has
    taken the held bodies in, returns its peak RSS growth in MiB, then finishes the admitted uploads.
    Returns {"admitted", "refused" (status -> count), "peak_mib", "finished" (status -> count)}."""
    reset_peak_rss(pid)
    base = proc_kib(pid, "VmRSS")
    uploads = [RawUpload(port, body, expect_continue=True) for _ in range(clients)]
    admitted: list[RawUpload] = []
    refused: dict[int, int] = {}
    try:
        for upload in uploads:
            upload.sock.settimeout(5)
            status, _ = upload.read_head()
            upload.sock.settimeout(60)
            if status == 100:
                admitted.append(upload)
            else:
                refused[status] = refused.get(status, 0) + 1
        senders = [threading.Thread(target=u.sock.sendall, args=(body[:-64],)) for u in admitted]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        # The bodies are in the server once its RSS has grown by them (or after 10 s).
        deadline = time.monotonic() + 10
        while proc_kib(pid, "VmRSS") - base < len(admitted) * len(body) // 1024 * 0.95 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        peak_mib = (proc_kib(pid, "VmHWM") - base) / 1024
        finished: dict[int, int] = {}
        for upload in admitted:
            upload.sock.sendall(body[-64:])
        for upload in admitted:
            status = upload.read_response()[0]
            finished[status] = finished.get(status, 0) + 1
    finally:
        for upload in uploads:
            upload.close()
    return {"admitted": len(admitted), "refused": refused, "peak_mib": peak_mib, "finished": finished}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(model: str, limit: int, clients: int, body: bytes) -> dict:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "mediflow", "serve", "--model", model, "--database-url", "none",
                                 "--port", str(port), "--max-uploads-in-flight", str(limit)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"server did not start:\n{log.read().decode(errors='replace')[-2000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            idle_mib = proc_kib(proc.pid, "VmRSS") / 1024
            result = hold_uploads(port, proc.pid, body, clients)
            return {"limit": limit, "idle_mib": idle_mib, **result}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def synthetic_film(seed: int = 0, size: int = 512) -> Image.Image:
    """Two bright ellipses on a dark noisy background: an image the decoder accepts, not a real film."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 40 + 20 * rng.random((size, size))
    for cx in (0.3, 0.7):
        img += 120 * (((xx - cx) / 0.18) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--limits", default="2,4,8", help="comma-separated --max-uploads-in-flight values")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("this benchmark reads /proc: Linux only")
    model = args.model
    if model is None:
        from mediflow.inference.bundled import default_model_path
        model = str(default_model_path())
    body = multipart(big_png(synthetic_film()))
    rows = [run_server(model, int(x), args.clients, body) for x in args.limits.split(",")]
    print(f"\n{args.clients} clients each holding a {len(body) / MiB:.1f} MiB upload open; "
          f"{os.cpu_count()} CPUs ({platform.machine()}), model {Path(model).name}\n")
    print("| --max-uploads-in-flight | admitted | refused | peak RSS growth (MiB) | per admitted upload (MiB) "
          "| idle RSS (MiB) | admitted uploads' answers |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        refused = ", ".join(f"{n} x {s}" for s, n in sorted(r["refused"].items())) or "0"
        finished = ", ".join(f"{n} x {s}" for s, n in sorted(r["finished"].items()))
        per = r["peak_mib"] / r["admitted"] if r["admitted"] else float("nan")
        print(f"| {r['limit']} | {r['admitted']} | {refused} | {r['peak_mib']:.0f} | {per:.1f} | {r['idle_mib']:.0f} "
              f"| {finished} |")


if __name__ == "__main__":
    main()
