"""Serving benchmark: the original design's code path (design_server.py) vs MediFlow's torch and fp32
ONNX backends and the served default (`mediflow serve --model M.pth`: int8 with fp32 near the
operating point when its export was accepted and this CPU computes it as recorded, else fp32), in
one run.

For each configuration it measures, on the same full-resolution JPEGs:
- model-only latency (one preprocessed upload at a time, median, with the server's thread settings;
  the served default's includes its fp32 re-runs),
- end-to-end HTTP latency p50/p95 of `POST /api/vision/analyze` against a real uvicorn server on
  127.0.0.1 in its own process (and with `?heatmap=true` for MediFlow),
- batch throughput in images/s on 224x224 JPEGs (decode + preprocess + model; MediFlow through
  `analyze_folder`, the `mediflow predict DIR --out CSV` path, CSV included),
- each server's peak RSS and its RSS after 500 requests.
Requests go to the servers in interleaved blocks so that all of them see the same background load
(the machine may be shared); compare ratios from one run, not absolute numbers across runs.
Back to back (the default) measures a busy server; `--gap-ms` pauses before every request, as
between one doctor's uploads, which is slower on a VM whose idle cores must wake up first.

    PYTHONPATH=$PWD python benchmarks/serving_benchmark.py [--model M.pth] [--requests 500]
        [--gap-ms 500] [--also-threads 1] [--candidate C.pth]

`--candidate` adds the served default of a second model (an ensemble, say) with and without the
study store, in the same interleaved rounds, and prints its p50 over --model's for each.

Prints a markdown table (and writes it with the raw numbers to --out-json when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FULLRES = REPO.parent / "shared" / "data" / "fullres_samples"
DEFAULT_224 = REPO.parent / "shared" / "data" / "chest_xray224"
BLOCK = 10  # requests per server per round


@dataclass
class Server:
    name: str
    cmd: list[str]
    heatmap: bool
    # Which model-only and batch figures belong on this server's row (None: the same model as a row
    # above, served differently).
    key: str | None = None
    proc: subprocess.Popen | None = None
    port: int = 0
    plain_ms: list[float] = field(default_factory=list)
    heatmap_ms: list[float] = field(default_factory=list)
    rss_after: float = float("nan")
    peak_rss: float = float("nan")
    n_requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/vision/analyze"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(server: Server, env: dict[str, str]) -> None:
    server.port = free_port()
    server.proc = subprocess.Popen(server.cmd + ["--port", str(server.port)], env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(server: Server, client, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} server exited: {server.proc.stderr.read().decode()[-2000:]}")
        try:
            if client.get(f"http://127.0.0.1:{server.port}/health", timeout=2).status_code == 200:
                return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"{server.name} server not ready after {timeout}s")


def post(client, server: Server, name: str, data: bytes, heatmap: bool, gap_s: float = 0.0) -> float:
    if gap_s:
        time.sleep(gap_s)
    t = time.perf_counter()
    r = client.post(server.url + ("?heatmap=true" if heatmap else ""), files={"file": (name, data, "image/jpeg")})
    ms = (time.perf_counter() - t) * 1000
    if r.status_code != 200 or "prediction" not in r.json() or (heatmap and not r.json().get("heatmap")):
        raise SystemExit(f"{server.name}: bad answer {r.status_code} {r.text[:300]}")
    server.n_requests += 1
    return ms


def ensure_exports(model: Path, work: Path) -> tuple[Path, Path]:
    """model.pth and model.onnx in `work`, with model.int8.onnx when one made from `model` sits next
    to it (`mediflow export --int8`; served by default only if its export was accepted), and the
    model's input-check statistics when it has them."""
    work.mkdir(parents=True, exist_ok=True)
    from mediflow.checkpoint import file_sha256, load_checkpoint
    from mediflow.inference.backends import OnnxBackend
    from mediflow.inference.onnx_export import export_checkpoint

    pth = work / "model.pth"
    shutil.copy(model, pth)
    sha = file_sha256(pth)
    for suffix in (".onnx", ".int8.onnx"):
        src = model.with_suffix(suffix)
        if src.is_file() and (OnnxBackend(src).metadata.get("source_checkpoint") or {}).get("sha256") == sha:
            shutil.copy(src, work / f"model{suffix}")
    # The input check's statistics travel with the model, so the servers run the check as served.
    stats = model.with_suffix(".input_check.npz")
    if stats.is_file():
        shutil.copy(stats, work / "model.input_check.npz")
    if not (work / "model.onnx").is_file():
        print("exporting fp32 ONNX ...", file=sys.stderr)
        export_checkpoint(load_checkpoint(pth), pth, work / "model.onnx")
    return pth, work / "model.onnx"


def median_ms(fn, n: int) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return float(np.median(ts))


def model_only(pth: Path, onnx: Path, inputs: np.ndarray, n: int) -> tuple[dict[str, float], float]:
    """Median ms of one image through each model, cycling over `inputs` ((M, 3, 224, 224), the
    uploads preprocessed), and the share of them the served default re-runs in fp32."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from design_server import build_model

    from mediflow.inference.backends import GuardedInt8Backend, serving_threads
    from mediflow.inference.predictor import Predictor

    design = build_model()
    it = iter(range(10**9))

    def one() -> np.ndarray:
        return inputs[next(it) % len(inputs)][None]

    def run_design():
        with torch.no_grad():
            design(torch.from_numpy(one()))

    res = {"design": median_ms(run_design, n)}
    for name, path, backend in (("torch", pth, "torch"), ("onnx", onnx, "onnx"), ("default", pth, "auto")):
        # ONNX Runtime's thread pool as `mediflow serve` sets it (serving/app.py's load_predictor).
        p = Predictor.load(path, backend=backend, threads=serving_threads(), serving=True)
        res[name] = median_ms(lambda p=p: p.backend.run(one()), n)
    served = Predictor.load(pth).backend
    deferred = float("nan")
    if isinstance(served, GuardedInt8Backend):
        served.images = served.deferred = 0
        served.run(inputs)
        deferred = served.deferred / served.images
    return res, deferred


def batch_throughput(pth: Path, onnx: Path, images: list[Path], batch_size: int,
                     work: Path) -> dict[str, float]:
    import torch
    from design_server import TRANSFORM, build_model
    from PIL import Image

    from mediflow.inference.folder import analyze_folder
    from mediflow.inference.predictor import Predictor

    res = {}
    design = build_model()

    def design_batches():
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                xs = torch.stack([TRANSFORM(Image.open(p).convert("RGB")) for p in images[i:i + batch_size]])
                design(xs)

    t = time.perf_counter()
    design_batches()
    res["design"] = len(images) / (time.perf_counter() - t)
    folder = work / "batch"
    for i, p in enumerate(images):  # the sample as one folder, for `mediflow predict DIR`
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / p.parent.name / f"{i:05d}{p.suffix}").symlink_to(p.resolve())
    for name, path, backend in (("torch", pth, "torch"), ("onnx", onnx, "onnx"), ("default", pth, "auto")):
        p = Predictor.load(path, backend=backend)
        p.probabilities_from_tensors(np.zeros((batch_size, 3, 224, 224), np.float32))  # warm-up (arena)
        t = time.perf_counter()
        s = analyze_folder(p, folder, work / f"{name}.csv", batch_size=batch_size, progress=False)
        res[name] = s.analysed / (time.perf_counter() - t)
    return res


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def machine() -> str:
    cpu = "unknown CPU"
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = ("AVX-512 + VNNI" if "avx512_vnni" in flags
           else ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""))
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {isa}, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "mediflow" / "bundled" / "mediflow_lungs_best.pth")
    ap.add_argument("--images", type=Path, default=DEFAULT_FULLRES, help="full-resolution JPEGs (class folders)")
    ap.add_argument("--data224", type=Path, default=DEFAULT_224, help="224x224 dataset (batch throughput, calibration)")
    ap.add_argument("--requests", type=int, default=500, help="plain requests per server (RSS is read after these)")
    ap.add_argument("--heatmap-requests", type=int, default=100, help="heatmap requests per MediFlow server")
    ap.add_argument("--batch-images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model-runs", type=int, default=30)
    ap.add_argument("--also-threads", type=int,
                    help="add a row: the served default with `mediflow serve --threads N`")
    ap.add_argument("--gap-ms", type=float, default=0.0,
                    help="pause before every timed request (idle server, as between a doctor's uploads); default: "
                         "back to back")
    ap.add_argument("--candidate", type=Path,
                    help="a second model served by default beside --model (with and without the study store)")
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()

    import httpx

    from mediflow.inference.folder import find_images

    images = find_images(args.images)
    if not images:
        raise SystemExit(f"no images under {args.images}")
    uploads = [(p.name, p.read_bytes()) for p in images]
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="mediflow-bench-"))
    try:
        pth, onnx = ensure_exports(args.model, work)
        from mediflow.inference.predictor import Predictor

        default = Predictor.load(pth)
        default_name = "onnx fp32" if default.backend.path == onnx else "int8, fp32 near the operating point"
        inputs = np.stack([default.preprocess_array(default.load_image(p).image) for p in images])
        py = sys.executable
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        # --no-store: like the original design's server, keep no studies (and never write to the user's default store);
        # the last row adds serve's default study store (SQLite, in the temporary folder) to show its cost.
        serve = [py, "-m", "mediflow", "serve", "--host", "127.0.0.1"]
        servers = [
            Server("design (torchvision B0, eager, full decode)", [py, str(REPO / "benchmarks" / "design_server.py")],
                   False, "design"),
            Server("MediFlow torch", serve + ["--no-store", "--model", str(pth), "--backend", "torch"], True, "torch"),
            *([Server("MediFlow onnx fp32", serve + ["--no-store", "--model", str(onnx)], True, "onnx")]
              if default.backend.path != onnx else []),
            Server(f"MediFlow served default ({default_name})", serve + ["--no-store", "--model", str(pth)], True,
                   "default"),
            *([Server(f"MediFlow served default, --threads {args.also_threads}",
                      serve + ["--no-store", "--model", str(pth), "--threads", str(args.also_threads)], True)]
              if args.also_threads else []),
            Server("MediFlow served default + study store",
                   serve + ["--database-url", f"sqlite:///{work / 'studies.db'}", "--model", str(pth)], True),
        ]
        served_default = next(s for s in servers if s.key == "default")
        served_store = servers[-1]
        if args.candidate:
            cand_pth, _ = ensure_exports(args.candidate, work / "candidate")
            cand = Predictor.load(cand_pth).info.architecture
            servers += [
                Server(f"candidate served default ({cand})", serve + ["--no-store", "--model", str(cand_pth)], True),
                Server(f"candidate served default + study store ({cand})",
                       serve + ["--database-url", f"sqlite:///{work / 'candidate.db'}", "--model", str(cand_pth)],
                       True),
            ]
        for s in servers:
            start(s, env)
        with httpx.Client(timeout=120) as client:
            for s in servers:
                wait_ready(s, client)
                for name, data in uploads[:3]:  # warm-up: first-call allocations, lazy imports
                    post(client, s, name, data, False)
                    if s.heatmap:
                        post(client, s, name, data, True)
            print(f"servers up; {args.requests} plain (+{args.heatmap_requests} heatmap) requests each, "
                  f"interleaved in blocks of {BLOCK}", file=sys.stderr)
            # Rounds: every server gets a block of plain requests (and MediFlow servers a block of
            # heatmap requests while those last), so all configurations share the same moments.
            for i in range(0, max(args.requests, args.heatmap_requests), BLOCK):
                for s in servers:
                    for k in range(i, min(i + BLOCK, args.requests)):
                        name, data = uploads[k % len(uploads)]
                        s.plain_ms.append(post(client, s, name, data, False, args.gap_ms / 1000))
                    for k in range(i, min(i + BLOCK, args.heatmap_requests) if s.heatmap else i):
                        name, data = uploads[k % len(uploads)]
                        s.heatmap_ms.append(post(client, s, name, data, True, args.gap_ms / 1000))
            for s in servers:  # read after all requests, heatmaps included
                s.peak_rss = proc_status_mb(s.proc.pid, "VmHWM")
                s.rss_after = proc_status_mb(s.proc.pid, "VmRSS")
        for s in servers:
            s.proc.terminate()
            s.proc.wait(30)
        print("model-only latency ...", file=sys.stderr)
        mo, deferred = model_only(pth, onnx, inputs, args.model_runs)
        print("batch throughput ...", file=sys.stderr)
        pool = find_images(args.data224)
        rng = np.random.default_rng(0)
        batch_imgs = [pool[i] for i in sorted(rng.choice(len(pool), min(args.batch_images, len(pool)), replace=False))]
        bt = batch_throughput(pth, onnx, batch_imgs, args.batch_size, work)
    finally:
        for s in locals().get("servers", []):
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    base = pct(servers[0].plain_ms, 50)
    rows = []
    for s in servers:
        p50, p95 = pct(s.plain_ms, 50), pct(s.plain_ms, 95)
        h50, h95 = pct(s.heatmap_ms, 50), pct(s.heatmap_ms, 95)
        rows.append({
            "config": s.name, "model_ms": mo[s.key] if s.key else float("nan"),
            "http_p50": p50, "http_p95": p95,
            "speedup": base / p50, "heatmap_p50": h50, "heatmap_p95": h95,
            "heatmap_speedup": base / h50 if s.heatmap_ms else float("nan"),
            "batch_ips": bt[s.key] if s.key else float("nan"),
            "peak_rss_mb": s.peak_rss, "rss_after_mb": s.rss_after,
            "requests": s.n_requests,
        })
    load_end = os.getloadavg()
    fmt = lambda v, d=1: "–" if v != v else f"{v:.{d}f}"  # noqa: E731 (NaN -> dash)
    lines = [
        f"Machine: {machine()}; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end.",
        f"{len(uploads)} full-resolution JPEGs from {args.images.name}/ (median "
        f"{np.median([len(d) for _, d in uploads]) / 1e3:.0f} kB); {args.requests} plain + "
        f"{args.heatmap_requests} heatmap requests per server, one at a time"
        + (f", each after a {args.gap_ms:g} ms pause" if args.gap_ms else ", back to back")
        + f", servers interleaved in blocks of {BLOCK} (RSS read after all of them); "
        f"batch: {len(batch_imgs)} "
        f"224x224 JPEGs, batch size {args.batch_size}. Served default: {default.info.architecture}"
        + ("" if deferred != deferred else f"; {deferred:.0%} of the uploads re-run in fp32 (near the operating point)")
        + ".",
        "",
        "| configuration | model only, ms | HTTP p50, ms | HTTP p95, ms | p50 speed-up | heatmap p50, ms "
        "| heatmap p95, ms | heatmap speed-up | batch, images/s | peak RSS, MB | RSS at end, MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {fmt(r['model_ms'])} | {fmt(r['http_p50'])} | {fmt(r['http_p95'])} | "
            f"{fmt(r['speedup'], 2)}x | {fmt(r['heatmap_p50'])} | {fmt(r['heatmap_p95'])} | "
            f"{fmt(r['heatmap_speedup'], 2)}{'' if r['heatmap_speedup'] != r['heatmap_speedup'] else 'x'} | "
            f"{fmt(r['batch_ips'], 0)} | {fmt(r['peak_rss_mb'], 0)} | {fmt(r['rss_after_mb'], 0)} |")
    if args.candidate:
        row = {s.name: r for s, r in zip(servers, rows, strict=True)}
        pairs = (("--no-store", row[served_default.name], rows[-2]),
                 ("with the study store", row[served_store.name], rows[-1]))
        lines += ["", "| candidate over --model, served default | HTTP p50 ratio | heatmap p50 ratio |",
                  "|---|---:|---:|"]
        for label, ref, cand_row in pairs:
            lines.append(f"| {label} | {cand_row['http_p50'] / ref['http_p50']:.2f}x | "
                         f"{cand_row['heatmap_p50'] / ref['heatmap_p50']:.2f}x |")
    print("\n".join(lines))
    if args.out_json:
        report = {"machine": machine(), "load": [load_start, load_end], "gap_ms": args.gap_ms, "rows": rows}
        args.out_json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
