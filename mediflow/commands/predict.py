"""`mediflow predict [--model M] IMAGE...` (JSON lines) or `mediflow predict DIR --out predictions.csv`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict images (JSON lines) or a folder (CSV)",
                       description="Image files: one JSON line per image on stdout. A folder (searched "
                                   "recursively, JPEG/PNG/WebP/TIFF/DICOM) with --out: a CSV as `mediflow analyze` "
                                   "writes it (resumable), decoding in parallel with inference, with a progress bar. "
                                   "Unreadable images get an error (field or column) and make the exit status 1.")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--model", help="checkpoint or .onnx export (default: the bundled model)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto: ONNX Runtime when an export of the checkpoint is available (default)")
    p.add_argument("--review-below", type=float, default=0.70, help="confidence under which needs_review is set")
    p.add_argument("--out", help="folder input: the CSV to write (or resume), e.g. predictions.csv")
    p.add_argument("--batch-size", type=int, default=64, help="folder input: images per batch (default 64)")
    p.add_argument("--workers", type=int, default=2, help="folder input: decoding threads (default 2)")
    p.add_argument("--heatmap", metavar="DIR", help="also write each image with its heatmap overlaid into DIR")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.errors import MediFlowError

    paths = [Path(p) for p in args.images]
    folders = [p for p in paths if p.is_dir()]
    if folders and len(paths) > 1:
        raise MediFlowError("give one folder, or image files, not both")
    if folders and not args.out:
        raise MediFlowError(f"{folders[0]} is a folder: name the CSV to write with --out, e.g. --out predictions.csv")
    if args.batch_size < 1 or args.workers < 1:
        raise MediFlowError("--batch-size and --workers must be at least 1")
    if folders:
        from mediflow.inference.folder import check_folder

        check_folder(folders[0])  # before the model loads: a typo should fail at once
    from mediflow.inference.predictor import Predictor

    predictor = Predictor.load(args.model, backend=args.backend, review_below=args.review_below)
    return _folder(args, predictor, folders[0]) if folders else _json_lines(args, predictor, paths)


def _folder(args: argparse.Namespace, predictor, folder: Path) -> int:
    from mediflow.inference.folder import analyze_folder, skipped_lines

    s = analyze_folder(predictor, folder, args.out, batch_size=args.batch_size, workers=args.workers,
                       progress=sys.stderr.isatty(), heatmap_dir=args.heatmap)
    print(f"mediflow predict: {s.found} image files: {s.analysed} predicted, {s.refused} refused by the input "
          f"check (no finding), {s.failed} unreadable (error rows), "
          f"{s.skipped} already in {args.out}", file=sys.stderr)
    for line in skipped_lines(s):
        print(f"mediflow predict: {line}", file=sys.stderr)
    if s.failed:
        print(f"mediflow predict: error: {s.failed} image(s) could not be read (see the 'error' column)",
              file=sys.stderr)
        return 1
    return 0


def _json_lines(args: argparse.Namespace, predictor, paths: list[Path]) -> int:
    from mediflow.data.images import load_image
    from mediflow.errors import ImageDecodeError
    from mediflow.inference.heatmap import blend
    from mediflow.inference.input_check import InputRejected

    heat_dir = Path(args.heatmap) if args.heatmap else None
    if heat_dir is not None:
        heat_dir.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    failed = refused = 0
    for path in paths:
        try:
            decoded = load_image(path, draft_size=predictor.draft_size)
            response, hmap = predictor.predict_with_map(decoded, heatmap=heat_dir is not None)
            result = {"file": str(path), **response}
            if decoded.notes:
                result["notes"] = list(decoded.notes)
        except InputRejected as exc:  # no finding: what the API answers with 422
            result, hmap = {"file": str(path), "detail": str(exc), "input_check": exc.input_check}, None
            refused += 1
        except ImageDecodeError as exc:
            result, hmap = {"file": str(path), "error": str(exc)}, None
            failed += 1
        except Exception as exc:  # a library bug on one odd file must not stop the others
            result, hmap = {"file": str(path), "error": f"{path}: could not be analysed (unexpected "
                                                        f"{type(exc).__name__} in the decoder; please report it "
                                                        "with the file)"}, None
            failed += 1
        if hmap is not None:
            out = heat_dir / _unique(path.stem, written)
            blend(decoded.image, hmap).save(out)
            result["heatmap_file"] = str(out)
        print(json.dumps(result), flush=True)
    if failed:
        print(f"mediflow predict: error: {failed} of {len(paths)} images could not be read (see their 'error' "
              "field)", file=sys.stderr)
    if refused:
        print(f"mediflow predict: error: {refused} of {len(paths)} images were refused by the input check, no "
              "finding (see their 'input_check' field)", file=sys.stderr)
    return 1 if failed or refused else 0


def _unique(stem: str, used: set[str]) -> str:
    """`stem.png`, or `stem-2.png`, ... when files from different folders share a name."""
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name
