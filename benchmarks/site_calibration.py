"""What `mediflow calibrate --data SITE_DIR` (the go-live step) buys at a new site, measured honestly.

test_dev stands in for a new hospital: it is split by patient into two halves; the operating point
is refitted on one half (as a site would on its own labelled films) and judged on the other, and
the other way round, over several random patient splits. Each row compares, on the judged half,
the model's stored operating point with the refitted one.

    PYTHONPATH=$PWD python benchmarks/site_calibration.py [--model PATH] [--data ROOT] [--splits 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from generalization import machine_description  # benchmarks/ is on sys.path when run as a script

from mediflow.checkpoint import load_checkpoint
from mediflow.data.dataset import grouped_split, scan_class_folders
from mediflow.decision import softmax
from mediflow.inference.bundled import default_model_path
from mediflow.metrics import compute_metrics
from mediflow.training.site_calibration import fit_operating_point, samples_logits

KEYS = ("accuracy", "sensitivity", "specificity", "balanced_accuracy")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--data", default="../shared/data/chest_xray224", help="root with test_dev/")
    ap.add_argument("--splits", type=int, default=5, help="random patient-grouped half splits (seeds 0..N-1)")
    ap.add_argument("--min-sensitivity", type=float, default=0.97)
    args = ap.parse_args(argv)
    site = Path(args.data) / "test_dev"
    if not site.is_dir():
        print(f"error: {site}: no such folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    path = default_model_path(args.model)
    ckpt = load_checkpoint(path)
    names = list(ckpt["class_names"])
    films = scan_class_folders(site)
    logits = samples_logits(ckpt, films)
    labels = np.asarray([names.index(films.class_names[y]) for y in films.labels])
    index = {p: i for i, p in enumerate(films.paths)}
    stored = softmax(logits, float(ckpt.get("temperature") or 1.0), ckpt.get("logit_bias"))
    rows = []
    for seed in range(args.splits):
        a, b = grouped_split(films, val_fraction=0.5, seed=seed)
        halves = [np.array([index[p] for p in h.paths]) for h in (a, b)]
        for fit_on, judge in (halves, halves[::-1]):
            fit = fit_operating_point(logits[fit_on], labels[fit_on], names, min_sensitivity=args.min_sensitivity)
            refit = softmax(logits[judge], fit["temperature"], fit["logit_bias"])
            before = compute_metrics(labels[judge], stored[judge], names, threshold=ckpt.get("threshold"))
            after = compute_metrics(labels[judge], refit, names, threshold=fit["threshold"])
            rows.append((len(fit_on), len(judge), before, after))
    print(f"machine: {machine_description()}; model {path.name}; site = {site} ({len(films)} films), "
          f"{args.splits} patient-grouped half splits x 2 directions; {time.perf_counter() - t0:.0f} s\n")
    print("| operating point, judged on the other half | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for label, k in (("stored (training site's validation)", 2), ("refitted on the site's half (sens. >= "
                                                                   f"{args.min_sensitivity})", 3)):
        vals = np.array([[r[k][key] for key in KEYS] for r in rows])
        print(f"| {label} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(vals.mean(0), vals.std(0))) + " |")
    print(f"\nmean ± SD over {len(rows)} folds of ~{rows[0][1]} judged films each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
