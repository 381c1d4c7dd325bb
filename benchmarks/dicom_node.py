"""The DICOM node under load: chest films sent by parallel storescu runs, through a real Orthanc.

Run: PYTHONPATH=. python benchmarks/dicom_node.py [--n 200] [--lanes 4]
     [--postgres postgresql+psycopg://mediflow:mediflow@127.0.0.1:5432/postgres]

Four runs on the same N films (pediatric films of ../shared/data wrapped into CR instances, see
--films), each with a fresh Orthanc and a fresh study store:
1. end to end through Orthanc: LANES storescu runs (one association per film) store into Orthanc,
   whose Lua OnStoredInstance rule (docs/pacs.md's recommended one: SendToModality, each chest film
   as it is stored) routes it to one node process; the SRs go back into Orthanc. Once with a SQLite
   store, once with PostgreSQL. --routing study uses the whole-study OnStableStudy rule instead (a
   job per stable study, StableAge 1 s).
2. node drain alone: a receiving node with no analysis thread takes all N films straight from the
   storescu runs into a PostgreSQL queue; then one worker-only process (--no-listen) analyses them
   and stores the SRs in Orthanc.
3. as 2, with two worker-only processes on the same PostgreSQL queue.
`mediflow analyze`'s code path (analyze_folder, the model loaded once) runs on the same .dcm files
before and after these, in the same benchmark run; the ratios are against the mean of the two.
CPU ms/film: CPU time (all threads) of the node process(es) and of Orthanc from the first film sent
to the last SR stored, per film; for analyze, its own. Unlike films/s it hardly depends on what
else runs on the machine.
Reception -> SR stored: the node's received_at to the SR's C-STORE success (sent_at). Node
throughput: films / (first reception .. last SR stored). The 1-minute load average is sampled
every 5 s during the runs (the machine may be shared). Prints one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "harness"))

from dicom_node_process import NodeProcess, PostgresDatabase, dcmtk, film_dataset, write  # noqa: E402
from orthanc_process import OrthancProcess, free_port  # noqa: E402

DATA = REPO.parent / "shared" / "data"
FILM_SETS = {
    # Full-resolution pediatric films (32 distinct images, reused with new UIDs up to --n): what a
    # modality sends, so decoding weighs as it does in a hospital.
    "fullres": DATA / "fullres_samples",
    # 224 px copies (hundreds of distinct films): decoding costs almost nothing.
    "224": DATA / "chest_xray224" / "test_dev",
}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def send_lanes(port: int, aec: str, files: list[Path], lanes: int) -> tuple[list[float], int]:
    """`lanes` threads, each running storescu once per film; (seconds per call, failed calls)."""
    times: list[float] = []
    failed = [0]
    lock = threading.Lock()

    def lane(chunk: list[Path]) -> None:
        for f in chunk:
            t0 = time.perf_counter()
            rc = subprocess.run([dcmtk("storescu"), "-aet", "TESTPACS", "-aec", aec, "127.0.0.1", str(port), str(f)],
                                capture_output=True).returncode
            with lock:
                times.append(time.perf_counter() - t0)
                failed[0] += rc != 0

    threads = [threading.Thread(target=lane, args=(files[i::lanes],)) for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, failed[0]


def sr_timings(database_url: str) -> tuple[list[float], float, int]:
    """(reception -> SR stored seconds per film, node throughput films/s, SRs sent)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT i.received_at, r.sent_at FROM dicom_instances i JOIN dicom_results r ON r.instance_id = i.id "
            "WHERE r.kind = 'sr' AND r.state = 'sent'")).all()
    engine.dispose()

    def ts(value):
        from datetime import datetime

        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    pairs = [(ts(a), ts(b)) for a, b in rows]
    if not pairs:
        return [], 0.0, 0
    latencies = [(b - a).total_seconds() for a, b in pairs]
    span = (max(b for _, b in pairs) - min(a for a, _ in pairs)).total_seconds()
    return latencies, len(pairs) / span, len(pairs)


def drain_rate(database_url: str) -> float:
    """Films per second from the first analysis finished to the last SR stored (the queue was full)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        first, last, n = conn.execute(text(
            "SELECT min(i.finished_at), max(r.sent_at), count(*) FROM dicom_instances i "
            "JOIN dicom_results r ON r.instance_id = i.id WHERE r.kind = 'sr' AND r.state = 'sent'")).one()
    engine.dispose()
    return (n - 1) / (last - first).total_seconds()


def wait_sent(database_url: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sr_timings(database_url)[2] >= n:
            return
        time.sleep(1)
    raise RuntimeError(f"not all {n} SRs were sent within {timeout:.0f} s")


def orthanc_sr_count(orthanc: OrthancProcess) -> int:
    return len(orthanc.post("/tools/find", json={"Level": "Instance", "Query": {"Modality": "SR"}}).json())


def run_routed(work: Path, files: list[Path], lanes: int, node_args: list[str], routing: str, database_url: str,
               name: str, timeout: float = 1800) -> dict:
    """Modality -> Orthanc -> (Lua routing) -> node -> SR -> Orthanc, one node process on `database_url`."""
    node_port = free_port()
    orthanc = OrthancProcess(work / f"orthanc-{name}", node_port=node_port, routing=routing).start()
    node = NodeProcess(work, database_url, send_to=orthanc.destination, port=node_port, name=name, extra=node_args)
    try:
        node.start()
        cpu0 = cpu_s(node.proc.pid), cpu_s(orthanc.proc.pid)
        times, failed = send_lanes(orthanc.dicom_port, orthanc.aet, files, lanes)
        wait_sent(database_url, len(files), timeout)
        cpu1 = cpu_s(node.proc.pid), cpu_s(orthanc.proc.pid)
        time.sleep(6)  # with study routing the results come back to the node: they must add nothing
        latencies, throughput, _ = sr_timings(database_url)
        return {"answered": len(times) - failed, "store_p95": pct(times, 95), "srs": orthanc_sr_count(orthanc),
                "lat_p50": pct(latencies, 50), "lat_p95": pct(latencies, 95), "throughput": throughput,
                "node_cpu_ms": (cpu1[0] - cpu0[0]) / len(files) * 1000,
                "orthanc_cpu_ms": (cpu1[1] - cpu0[1]) / len(files) * 1000}
    finally:
        node.stop()
        orthanc.stop()


def run_drain(work: Path, files: list[Path], lanes: int, database_url: str, processes: int, node_args: list[str],
              timeout: float = 1800) -> dict:
    """A receiving node with no analysis thread takes every film first (PostgreSQL queue); then
    `processes` worker-only node processes drain the queue and deliver the SRs."""
    node_port = free_port()
    orthanc = OrthancProcess(work / f"orthanc-drain{processes}", node_port=node_port, routing=None).start()
    receiver = NodeProcess(work, database_url, send_to=orthanc.destination, port=node_port,
                           name=f"receiver{processes}", extra=["--workers", "0"])
    workers = [NodeProcess(work, database_url, send_to=orthanc.destination, listen=False,
                           name=f"worker{processes}-{i}", extra=node_args) for i in range(processes)]
    try:
        receiver.start()
        times, failed = send_lanes(node_port, "MEDIFLOW", files, lanes)
        for w in workers:
            w.start()
        cpu0 = sum(cpu_s(p.proc.pid) for p in (receiver, *workers))
        wait_sent(database_url, len(files), timeout)
        cpu1 = sum(cpu_s(p.proc.pid) for p in (receiver, *workers))
        return {"answered": len(times) - failed, "store_p95": pct(times, 95), "srs": orthanc_sr_count(orthanc),
                "rate": drain_rate(database_url), "node_cpu_ms": (cpu1 - cpu0) / len(files) * 1000}
    finally:
        for p in (receiver, *workers):
            p.stop()
        orthanc.stop()


class LoadSampler:
    """The 1-minute load average every `every_s` seconds while it runs (a context manager)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def analyze_throughput(folder: Path, out: Path) -> tuple[float, float]:
    """Films per second of `mediflow analyze`'s code path (the model loaded once, batches of 16,
    decoding in threads, a CSV row per film) on `folder`."""
    from mediflow.inference.folder import analyze_folder
    from mediflow.inference.predictor import Predictor

    predictor = Predictor.load()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = analyze_folder(predictor, folder, out, progress=False)
    return summary.analysed / (time.perf_counter() - t0), (time.process_time() - c0) / summary.analysed * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--postgres", default=os.environ.get(
        "MEDIFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://mediflow:mediflow@127.0.0.1:5432/postgres"))
    ap.add_argument("--films", choices=sorted(FILM_SETS), default="fullres")
    ap.add_argument("--node-workers", type=int, default=2, help="analysis threads per node process (--workers)")
    ap.add_argument("--routing", choices=["instance", "study"], default="instance",
                    help="Orthanc's Lua rule for the end-to-end run: each chest film as stored (recommended) "
                         "or each study once stable")
    args = ap.parse_args()
    folder_in = FILM_SETS[args.films]
    distinct = sorted(folder_in.glob("*/*.jpeg"))
    if not distinct:
        print(f"no films under {folder_in}", file=sys.stderr)
        return 1
    sources = [distinct[i % len(distinct)] for i in range(args.n)]
    node_args = ["--workers", str(args.node_workers)]
    with tempfile.TemporaryDirectory() as tmp, LoadSampler() as load:
        work = Path(tmp)
        folder = work / "films"
        folder.mkdir()
        files = [write(film_dataset(src), folder / f"{i:04d}.dcm") for i, src in enumerate(sources)]
        # `mediflow analyze` before and after the node's runs: the load of a shared machine drifts,
        # and the ratio is taken against the mean of the two.
        analyze_runs = [analyze_throughput(folder, work / "analyze-before.csv")]
        print(f"analyze before: {analyze_runs[0]}", file=sys.stderr, flush=True)
        routed = {"SQLite": run_routed(work, files, args.lanes, node_args, args.routing,
                                       f"sqlite:///{work / 'node.db'}", "routed-sqlite")}
        print(f"routed, SQLite: {routed['SQLite']}", file=sys.stderr, flush=True)
        with PostgresDatabase(args.postgres) as url:
            routed["PostgreSQL"] = run_routed(work, files, args.lanes, node_args, args.routing, url, "routed-pg")
        print(f"routed, PostgreSQL: {routed['PostgreSQL']}", file=sys.stderr, flush=True)
        drains = {}
        for processes in (1, 2):
            with PostgresDatabase(args.postgres) as url:
                drains[processes] = run_drain(work, files, args.lanes, url, processes, node_args)
            print(f"drained by {processes}: {drains[processes]}", file=sys.stderr, flush=True)
        analyze_runs.append(analyze_throughput(folder, work / "analyze-after.csv"))
        analyze = statistics.mean(rate for rate, _ in analyze_runs)
        analyze_cpu = statistics.mean(cpu for _, cpu in analyze_runs)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    n = args.n
    print(f"\n{n} CR chest films ({args.films}: {len(distinct)} distinct images, each sent with its own UIDs), "
          f"{args.lanes} parallel storescu lanes (one association per film); {os.cpu_count()} CPUs ({model}); "
          f"bundled model; {args.node_workers} analysis thread(s) per node process; load average (1 min) "
          f"during the runs {min(load.samples):.1f} to {max(load.samples):.1f}, median "
          f"{statistics.median(load.samples):.1f}")
    rule = ("OnStoredInstance, SendToModality per chest film" if args.routing == "instance"
            else "OnStableStudy, StableAge 1 s")
    print("| run | C-STOREs answered | storescu p95 s | SRs in Orthanc | reception->SR p50 s | p95 s | films/s "
          "| vs analyze | CPU ms/film |")
    print("|---|---|---|---|---|---|---|---|---|")
    for store, r in routed.items():
        print(f"| **end to end through Orthanc** (what a hospital gets): modality -> Orthanc -> routed ({rule}) to 1 "
              f"node ({store}) -> SR stored in Orthanc | {r['answered']}/{n} | {r['store_p95']:.3f} | {r['srs']} "
              f"| {r['lat_p50']:.2f} | {r['lat_p95']:.2f} | {r['throughput']:.1f} | {r['throughput'] / analyze:.2f} "
              f"| node {r['node_cpu_ms']:.0f} + Orthanc {r['orthanc_cpu_ms']:.0f} |")
    for processes, d in drains.items():
        label = ("**node drain alone**: films already queued (PostgreSQL), 1 worker process analyses them and "
                 "stores the SRs in Orthanc" if processes == 1 else
                 f"node drain alone, {processes} worker processes on one PostgreSQL")
        print(f"| {label} | {d['answered']}/{n} | {d['store_p95']:.3f} | {d['srs']} | | | {d['rate']:.1f} "
              f"| {d['rate'] / analyze:.2f} | node {d['node_cpu_ms']:.0f} |")
    before, after = analyze_runs[0][0], analyze_runs[1][0]
    print(f"| `mediflow analyze` (batch 16, decoding in threads) on the same .dcm files, before / after the node "
          f"runs: {before:.1f} / {after:.1f} films/s | | | | | | {analyze:.1f} (mean) | 1.00 | {analyze_cpu:.0f} |")
    print(f"\n2 worker processes vs 1 on one PostgreSQL queue: {drains[2]['rate'] / drains[1]['rate']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
