"""`mediflow evaluate --model model.pth --data DIR --out REPORT_DIR`"""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="evaluate a model on a labelled dataset",
                       description="Metrics, plots and per-image predictions for a class-folder dataset "
                                   "(or a root holding test/).")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--data", required=True, help="class-folder dataset, or a root with test/")
    p.add_argument("--out", default="report", help="report folder (default: report/)")
    p.add_argument("--batch-size", type=int, default=64, help="images per inference batch (default: 64)")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes (default: 1)")
    p.add_argument("--skip-bad", action="store_true", help="skip corrupt/non-image files instead of stopping")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.evaluation.evaluate import evaluate
    from mediflow.evaluation.report import summary_table
    from mediflow.inference.predictor import Predictor

    predictor = Predictor.load(args.model)
    metrics = evaluate(predictor, args.data, args.out, batch_size=args.batch_size, workers=args.workers,
                       skip_bad=args.skip_bad, progress=sys.stderr.isatty())
    print(summary_table(metrics))
    print(f"\nreport written to {os.path.join(os.path.normpath(args.out), '')} "
          "(metrics.json, predictions.csv, confusion_matrix.png, roc.png)")
    return 0
