"""Shared fixtures: tiny synthetic datasets made in the tests, and the real data when present."""

from __future__ import annotations

import io
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
# The real external processes (Orthanc, dcmtk, the DICOM node) tests and benchmarks both start.
sys.path.insert(0, str(REPO / "harness"))
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_224 = SHARED_DATA / "chest_xray224"
FULLRES = SHARED_DATA / "fullres_samples"


# -- CI: a missing piece of the environment fails, it does not skip ---------------------------------
# On a developer's machine a test whose browser, PostgreSQL or Node toolchain is missing skips and says
# why. Under CI=true (as .ci/run sets, and as GitHub Actions and most CI services set) the same test
# fails: a green CI run must have run the browser and PostgreSQL tests. Only tests marked `realdata`
# (they need ../shared/data, which a user's clone does not have) may still skip there.

def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def environment_missing(reason: str) -> None:
    """Skip with `reason` on a developer's machine; fail with it under CI=true. Never returns."""
    if running_in_ci():
        pytest.fail(f"CI=true and a required piece of the test environment is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def _ci_skip_allowed(item) -> bool:
    return item is not None and item.get_closest_marker("realdata") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true, any skip outside a `realdata` test (an importorskip, a skip added later) is a
    failure, so that no environment gap can hide behind a green run."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and running_in_ci() and not _ci_skip_allowed(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: only tests marked realdata may skip; {item.nodeid} skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import time (pytest.importorskip at module level)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and running_in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a test module may not skip; {collector.nodeid} skipped: {reason}"


FRONTEND = REPO / "frontend"


@pytest.fixture(scope="session")
def node_toolchain() -> dict[str, str]:
    """node and npm, for the web app under frontend/ (required once frontend/package.json exists)."""
    tools = {name: shutil.which(name) for name in ("node", "npm")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        environment_missing(f"the web app needs {' and '.join(missing)} on PATH (apt-get install -y nodejs npm)")
    return tools


def xray_like(label: int, seed: int, size: int = 64, mode: str = "L") -> Image.Image:
    """A synthetic 'film': dark background, two bright lung-field ellipses; class 1 gets a dense blob.
    Different enough per class that a model can learn it, cheap enough for unit tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 40 + 20 * rng.random((size, size))
    for cx in (0.3, 0.7):
        img += 120 * (((xx - cx) / 0.18) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1)
    if label == 1:
        cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.65)
        img += 90 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01))
    arr = np.clip(img, 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    return im.convert(mode) if mode != "L" else im


def jpeg_bytes(img: Image.Image, quality: int = 90, **options) -> bytes:
    """`img` as a JPEG; `options`: PIL's other JPEG save options (e.g. restart_marker_rows=1)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **options)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header claims width x height 8-bit grey pixels (a decompression bomb)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG with its baseline frame header patched to claim width x height pixels."""
    data = bytearray(jpeg_bytes(xray_like(1, 0, 32)))
    sof = data.index(b"\xff\xc0")  # baseline frame: FFC0, length(2), precision(1), height(2), width(2)
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def make_dataset(root: Path, n_per_class: int = 12, size: int = 64, classes=("NORMAL", "PNEUMONIA")) -> Path:
    """root/{train,val}/CLASS/*.jpeg with Kermany-style names (several images per patient)."""
    for split, n in (("train", n_per_class), ("val", 4)):
        for label, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # crc32, not hash(): str hashes change per process, and the data must not
                seed = zlib.crc32(f"{split}/{cls}/{i}".encode())
                name = f"IM-{i // 2:04d}-{i % 2 + 1:04d}.jpeg" if label == 0 else f"person{i // 2}_bacteria_{i}.jpeg"
                (d / name).write_bytes(jpeg_bytes(xray_like(label, seed, size)))
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_224 / "train").is_dir():
        pytest.skip(f"real data not present at {REAL_224} (a user's clone has no ../shared)")
    return REAL_224


@pytest.fixture
def fullres_dir() -> Path:
    if not FULLRES.is_dir():
        pytest.skip(f"full-resolution samples not present at {FULLRES}")
    return FULLRES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real (if tiny and untrained-from-scratch) checkpoint: efficientnet_lite0 at 64 px, 2 epochs."""
    from mediflow.cli import main

    root = make_dataset(tmp_path_factory.mktemp("tinydata"))
    out = tmp_path_factory.mktemp("tinymodel") / "tiny.pth"
    rc = main(["train", "--data", str(root), "--weights", "none", "--image-size", "64", "--epochs", "2",
               "--val-fraction", "0.3", "--out", str(out), "--no-progress"])
    assert rc == 0 and out.is_file()
    return out


# -- real servers for the API, page and load tests -----------------------------------------------

ALLOWED_ORIGIN = "https://ris.example.org"  # the one cross-origin caller the live server trusts


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float, alive=lambda: True) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server process exited during start-up")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} not healthy after {timeout:.0f} s")


@pytest.fixture(scope="session")
def live_server(tiny_model, tmp_path_factory):
    """`mediflow serve` on the tiny model, in a subprocess on 127.0.0.1 (the real CLI, uvicorn and
    sockets). Yields an object with .url, .process and .model."""
    import os
    import subprocess
    import sys
    from types import SimpleNamespace

    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("MEDIFLOW_")}
    # The default study store lives in the user's data folder; tests keep theirs in a temp folder.
    env["MEDIFLOW_DATA_DIR"] = str(tmp_path_factory.mktemp("store"))
    cmd = [sys.executable, "-m", "mediflow", "serve", "--model", str(tiny_model), "--host", "127.0.0.1",
           "--port", str(port), "--cors-origin", ALLOWED_ORIGIN]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    server = SimpleNamespace(url=f"http://127.0.0.1:{port}", process=proc, model=tiny_model, log=log_path)
    try:
        wait_healthy(server.url, timeout=180, alive=lambda: proc.poll() is None)
    except RuntimeError as exc:
        proc.kill()
        proc.wait()
        pytest.fail(f"{exc}; server log:\n{log_path.read_text()[-3000:]}")
    yield server
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def thread_server():
    """Start `create_app(...)` apps under uvicorn in a thread of this process (for per-test settings).
    Call it with an app; returns the base URL. Servers stop when the test ends."""
    import threading

    import uvicorn

    running = []

    def start(app) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=60, alive=thread.is_alive)
        return url

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=20)


# MEDIFLOW_TEST_CHROMIUM points the browser tests at another build (or, to check the CI guard, at none).
CHROMIUM = Path(os.environ.get("MEDIFLOW_TEST_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps dialling Google on this closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (Playwright's own browser download cannot work here)."""
    if not CHROMIUM.exists():
        environment_missing(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        environment_missing("browser tests need the playwright package (pip install -e '.[test]')")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
