"""Centralized vs federated training with the same recipe, judged on test_dev.

Trains (or reuses, when its checkpoint exists in --work) one centralized model with `mediflow train`
and one federated model per configuration with `mediflow federated simulate`, all with the same
recipe and budget (frozen efficientnet_lite0, trimmed and equalised films, acquisition
augmentation, 4 cached feature views, 5 epochs = 5 rounds x 1 local epoch), evaluates each with
`mediflow evaluate` on test_dev (never trained on), and prints one table: validation AUC, test_dev
AUC, the paired difference to centralized with a 95% bootstrap interval (2,000 resamples of the
test_dev films, the same films for both models), and wall time.

    PYTHONPATH=$PWD python benchmarks/federated_comparison.py [--work runs/fed] [--configs 3:label-skew 3:patient ...]

The federated runs share one feature cache (--work/feat), so only the first pays the backbone pass.
Ray's memory monitor is switched off (RAY_memory_monitor_refresh_ms=0): on a machine shared with
other jobs it killed whole sites.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "chest_xray224"
RECIPE = ["--recipe", "frozen", "--arch", "efficientnet_lite0", "--augment", "acquisition", "--framing", "trim",
          "--intensity", "equalize", "--feature-views", "4", "--seed", "0"]
DEFAULT_CONFIGS = ["3:label-skew", "3:framing", "3:patient", "5:patient", "5:label-skew"]


def run(cmd: list[str], log: Path) -> float:
    """Run a mediflow command, its output in `log`; seconds taken. Exits with the log's tail on failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_memory_monitor_refresh_ms": "0"}
    t = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call([sys.executable, "-m", "mediflow", *cmd], stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc:
        raise SystemExit(f"failed ({rc}): mediflow {' '.join(cmd)}\n" + "".join(log.read_text().splitlines(True)[-15:]))
    return time.perf_counter() - t


def scores(eval_dir: Path) -> dict[str, tuple[int, float]]:
    """file -> (label 1 for PNEUMONIA, P(PNEUMONIA)) from `mediflow evaluate`'s predictions.csv."""
    with (eval_dir / "predictions.csv").open() as f:
        return {r["file"]: (int(r["label"] == "PNEUMONIA"), float(r["probability_PNEUMONIA"]))
                for r in csv.DictReader(f)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="dataset root with train/ and test_dev/")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "fed")
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, metavar="SITES:PARTITION[:ROUNDS]")
    ap.add_argument("--extra", default="", help="extra `federated simulate` flags for every configuration")
    args = ap.parse_args()
    if not (args.data / "test_dev").is_dir():
        raise SystemExit(f"no test_dev under {args.data}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    times_file = work / "times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    runs = [("centralized", None)] + [(f"fed_{c.replace(':', '_')}", c) for c in args.configs]
    for name, config in runs:
        ckpt = work / f"{name}.pth"
        if not ckpt.is_file():
            if config is None:
                cmd = ["train", "--data", str(args.data), *RECIPE, "--out", str(ckpt)]
            else:
                sites, partition, *rounds = config.split(":")
                cmd = ["federated", "simulate", "--data", str(args.data), "--sites", sites, "--partition", partition,
                       "--rounds", rounds[0] if rounds else "5", *RECIPE, "--cache-dir", str(work / "feat"),
                       "--out", str(ckpt), *args.extra.split()]
            print(f"{name}: training ...", file=sys.stderr)
            times[name] = run(cmd, work / f"{name}.log")
            times_file.write_text(json.dumps(times, indent=2))
        if not (work / f"{name}_eval" / "predictions.csv").is_file():
            run(["evaluate", "--model", str(ckpt), "--data", str(args.data / "test_dev"), "--out",
                 str(work / f"{name}_eval")], work / f"{name}_eval.log")

    base = scores(work / "centralized_eval")
    files = sorted(base)
    y = np.array([base[f][0] for f in files])
    p0 = np.array([base[f][1] for f in files])
    rng = np.random.default_rng(0)
    boots = [b for b in (rng.integers(0, len(files), len(files)) for _ in range(2000)) if 0 < y[b].sum() < len(b)]
    print("| training | validation AUC | test_dev AUC | test_dev AUC - centralized (95% CI) | wall time, s |")
    print("|---|---:|---:|---:|---:|")
    import torch

    for name, config in runs:
        ck = torch.load(work / f"{name}.pth", map_location="cpu", weights_only=True)
        val_auc = (ck.get("val_metrics") or {}).get("auc", float("nan"))
        s = scores(work / f"{name}_eval")
        p = np.array([s[f][1] for f in files])
        auc = roc_auc_score(y, p)
        if config is None:
            diff = "–"
        else:
            d = [roc_auc_score(y[b], p[b]) - roc_auc_score(y[b], p0[b]) for b in boots]
            diff = f"{auc - roc_auc_score(y, p0):+.4f} ({np.percentile(d, 2.5):+.4f} .. {np.percentile(d, 97.5):+.4f})"
        label = "centralized" if config is None else (
            f"federated, {config.split(':')[0]} sites, {config.split(':')[1]}"
            + (f", {config.split(':')[2]} rounds" if config.count(":") > 1 else ""))
        wall = times.get(name)
        print(f"| {label} | {val_auc:.4f} | {auc:.4f} | {diff} | {'–' if wall is None else f'{wall:.0f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
