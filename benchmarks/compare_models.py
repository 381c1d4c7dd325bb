"""Rows for docs/experiments.md: several models on test_dev and on original films, against a reference.

For each model (the first is the reference, normally the bundled model): test_dev AUC with its 95%
stratified bootstrap interval, the paired bootstrap of its AUC difference against the reference on
the same films (interval and one-sided p), accuracy / sensitivity / specificity at its stored
operating point, and original vs copy: each full-resolution original of fullres_train and
fullres_samples, as JPEG, PNG and 12-bit DICOM, against its 224 px training copy (agreement and
PNEUMONIA-call rate). Every film goes through the serving path (generalization.py's functions).

    PYTHONPATH=$PWD python benchmarks/compare_models.py --models A.pth B.pth ... [--data ROOT]
        [--backend auto|onnx|torch] [--no-originals]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from generalization import (  # noqa: E402
    DATA,
    auc_ci_bootstrap,
    load_and_score,
    machine_description,
    model_labels,
    original_vs_copy,  # benchmarks/ is on sys.path as a script
    paired_auc_difference,
)

from mediflow.data.dataset import scan_class_folders
from mediflow.errors import MediFlowError
from mediflow.evaluation.invariance import original_copy_pairs
from mediflow.inference.predictor import BACKENDS, Predictor
from mediflow.metrics import compute_metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints; the first is the reference")
    ap.add_argument("--data", type=Path, default=DATA, help=f"folder with train/ and test_dev/ (default {DATA})")
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--no-originals", action="store_true", help="skip the original-vs-copy columns")
    args = ap.parse_args(argv)
    test_dir = args.data / "test_dev"
    if not test_dir.is_dir():
        print(f"error: {test_dir}: no such folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    test = scan_class_folders(test_dir, min_classes=1)
    pairs = [] if args.no_originals else original_copy_pairs(
        [args.data.parent / "fullres_train", args.data.parent / "fullres_samples"], args.data / "train")
    rows, ref = [], None
    try:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for path in args.models:
                p = Predictor.load(path, backend=args.backend)
                labels = model_labels(p, test)
                y = labels == p.pos
                probs, _, _ = load_and_score(p, test.paths, pool)
                s = probs[:, p.pos]
                m = compute_metrics(labels, probs, p.class_names, threshold=p.threshold,
                                    positive_class=p.class_names[p.pos])
                row = {"model": Path(path).name, "arch": p.info.architecture, "backend": p.backend_name,
                       "auc": m["auc"], "ci": auc_ci_bootstrap(y, s), "acc": m["accuracy"],
                       "sens": m["sensitivity"], "spec": m["specificity"]}
                if ref is None:
                    ref = s
                row["paired"] = paired_auc_difference(y, ref, s)
                ovc = original_vs_copy(p, pairs, pool) if pairs else []
                row["ovc"] = {r["form"]: r for r in ovc}
                rows.append(row)
                print(f"{row['model']}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    except MediFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"machine: {machine_description()}; test_dev {len(test)} films; reference {rows[0]['model']}; "
          f"{time.perf_counter() - t0:.0f} s")
    if pairs:
        print(f"original vs copy: {len(pairs)} training films' originals against their 224 px copies")
    print()
    head = "| model | test_dev AUC (95% CI) | AUC - reference (paired 95% CI; p not better) | acc / sens / spec |"
    if pairs:
        head += " agree JPEG / PNG / DICOM | PNEUMONIA calls copies -> JPEG / DICOM |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        d = r["paired"]
        line = (f"| {r['model']} ({r['arch']}, {r['backend']}) | {r['auc']:.4f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f}) | "
                f"{d['difference']:+.4f} ({d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f}; {d['p_not_better']:.2f}) | "
                f"{r['acc']:.3f} / {r['sens']:.3f} / {r['spec']:.3f} |")
        if pairs:
            o = r["ovc"]
            line += (f" {o['original JPEG']['agree']:.3f} / {o['original PNG']['agree']:.3f} / "
                     f"{o['original 12-bit DICOM']['agree']:.3f} | {o['224 px copy']['positive_rate']:.3f} -> "
                     f"{o['original JPEG']['positive_rate']:.3f} / {o['original 12-bit DICOM']['positive_rate']:.3f} |")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
