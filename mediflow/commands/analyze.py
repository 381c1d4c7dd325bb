"""`mediflow analyze DIR --out results.csv`: every JPEG, PNG, WebP, TIFF and DICOM under DIR into a CSV, resumably."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="analyse a folder of images into a CSV (resumable)",
                       description="Analyse every JPEG, PNG, WebP, TIFF and DICOM file under DIR (recursively) and "
                                   "append one CSV row per file: file, prediction, confidence, p_<class>, "
                                   "needs_review, input_check (ok, warning or rejected: no finding), "
                                   "input_check_reasons, notes, error. Re-running skips files already in the CSV, so "
                                   "an interrupted run picks up where it stopped, and tries the files with an error "
                                   "row again. Unreadable files get an error row; files that are not images are "
                                   "counted and named with the reason. OUT.provenance.json records the model (SHA-256, "
                                   "version), its operating point and each run. Exit status is non-zero only when "
                                   "nothing could be analysed.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--out", required=True, help="CSV to write or resume, e.g. results.csv")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--batch-size", type=int, default=16, help="images per inference batch")
    p.add_argument("--workers", type=int, default=2, help="threads decoding images")
    p.add_argument("--retry-errors", action=argparse.BooleanOptionalAction, default=True,
                   help="on resume, analyse again the files an earlier run wrote an error row for (their old rows "
                        "are replaced)")
    p.add_argument("--review-below", type=float, default=0.70, help="confidence under which needs_review is set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.inference.folder import analyze_folder, check_folder, skipped_lines
    from mediflow.inference.predictor import Predictor

    check_folder(args.dir)  # before the model loads: a typo should fail at once
    predictor = Predictor.load(args.model, review_below=args.review_below)
    s = analyze_folder(predictor, args.dir, args.out, batch_size=args.batch_size, workers=args.workers,
                       progress=not args.no_progress and sys.stderr.isatty(), retry_errors=args.retry_errors)
    print(f"{s.found} image files: {s.analysed} analysed, {s.refused} refused by the input check (no finding), "
          f"{s.failed} unreadable (error rows), "
          f"{s.skipped} already in {args.out}" + (f" ({s.retried} error rows tried again)" if s.retried else ""))
    for line in skipped_lines(s):
        print(line)
    print(f"model {predictor.info.architecture} version {predictor.info.version}, "
          f"SHA-256 {predictor.info.sha256[:16]}...: recorded in {s.provenance}")
    if s.ok_in_csv == 0:
        print(f"mediflow analyze: error: no file under {args.dir} could be analysed (see the error column of "
              f"{args.out})", file=sys.stderr)
        return 1
    return 0
