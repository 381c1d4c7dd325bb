"""`mediflow predict [--model M] IMAGE...` (JSON lines) or `mediflow predict DIR --out predictions.csv`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict images (JSON lines) or folders (CSV)",
                       description="Image files: one JSON line per image on stdout. Folders (searched recursively) "
                                   "or --out: a CSV, decoded in parallel with inference, with a progress bar. "
                                   "Unreadable images get an error (field/column) and make the exit status 1.")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--model", help="checkpoint or .onnx export (default: the bundled model)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto: ONNX Runtime when an export of the checkpoint is available (default)")
    p.add_argument("--review-below", type=float, default=0.70, help="confidence under which needs_review is set")
    p.add_argument("--out", help="write a CSV here (default for folders: CSV on stdout)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument("--heatmap", metavar="DIR", help="write a heatmap overlay PNG per image into DIR")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.errors import MediFlowError
    from mediflow.inference.predictor import Predictor

    if args.batch_size < 1 or args.workers < 1:
        raise MediFlowError("--batch-size and --workers must be at least 1")
    paths = [Path(p) for p in args.images]
    predictor = Predictor.load(args.model, backend=args.backend, review_below=args.review_below)
    if args.out or any(p.is_dir() for p in paths):
        return _csv(args, predictor, paths)
    return _json_lines(args, predictor, paths)


def _heatmap_dir(args: argparse.Namespace) -> Path | None:
    if not args.heatmap:
        return None
    d = Path(args.heatmap)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _json_lines(args: argparse.Namespace, predictor, paths: list[Path]) -> int:
    from mediflow.data.images import image_notes, load_image
    from mediflow.errors import ImageDecodeError

    heat_dir = _heatmap_dir(args)
    overlay_name = _OverlayNames()
    status = 0
    for path in paths:
        try:
            img = load_image(path, draft_size=predictor.draft_size)
            response, hmap = predictor.predict_with_map(img, heatmap=heat_dir is not None)
            result = {"file": str(path), **response}
            if image_notes(img):
                result["notes"] = image_notes(img)
        except ImageDecodeError as exc:
            result = {"file": str(path), "error": str(exc)}
            status = 1
            hmap = None
        if hmap is not None:
            out = heat_dir / overlay_name(path, None)
            _write_overlay(out, img, hmap)
            result["heatmap_file"] = str(out)
        print(json.dumps(result), flush=True)
    if status:
        print("mediflow predict: error: some images could not be read (see their 'error' field)", file=sys.stderr)
    return status


class _OverlayNames:
    """Overlay file names: the image's path under its folder argument's parent ('/' -> '__'), or
    its name for files given directly; a counter suffix keeps repeated names apart."""

    def __init__(self):
        self.used: set[str] = set()

    def __call__(self, path: Path, root: Path | None) -> str:
        base = root.resolve().parent if root is not None else None
        p = path.resolve()
        rel = p.relative_to(base) if base is not None and p.is_relative_to(base) else Path(p.name)
        stem = "__".join(rel.with_suffix("").parts)
        name, n = f"{stem}.png", 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}.png"
        self.used.add(name)
        return name


def _write_overlay(out: Path, img, heatmap) -> None:
    from mediflow.inference.heatmap import blend

    blend(img, heatmap).save(out)


def _csv(args: argparse.Namespace, predictor, paths: list[Path]) -> int:
    from mediflow.errors import MediFlowError
    from mediflow.inference.batch import list_images, predict_files

    files: list[tuple[Path, Path | None]] = []  # (file, the folder argument it came from)
    for p in paths:
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise MediFlowError(f"{p}: no image files (.jpeg/.jpg/.png/.dcm) in this folder")
            files += [(f, p) for f in found]
        else:
            files.append((p, None))
    heat_dir = _heatmap_dir(args)
    overlay_name = _OverlayNames()
    roots = dict(files)
    names = predictor.class_names
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    bad = 0
    try:
        w = csv.writer(out)
        w.writerow(["file", "prediction", "confidence", *[f"p_{n}" for n in names], "needs_review", "error"])
        for r in predict_files(predictor, [f for f, _ in files], batch_size=args.batch_size, workers=args.workers,
                               heatmap=heat_dir is not None, progress=sys.stderr.isatty()):
            if r.error:
                bad += 1
                w.writerow([str(r.path), "", "", *[""] * len(names), "", r.error])
                continue
            resp = predictor.response(r.probs, 0.0)
            w.writerow([str(r.path), resp["prediction"], f"{resp['confidence']:.4f}",
                        *[f"{p:.4f}" for p in r.probs], int(resp["needs_review"]), ""])
            if heat_dir is not None:
                _write_overlay(heat_dir / overlay_name(r.path, roots[r.path]), r.image, r.heatmap)
    finally:
        if out is not sys.stdout:
            out.close()
    n = len(files)
    print(f"mediflow predict: {n - bad} of {n} images predicted" + (f" -> {args.out}" if args.out else ""),
          file=sys.stderr)
    if bad:
        print(f"mediflow predict: error: {bad} image(s) could not be read (see the 'error' column)", file=sys.stderr)
        return 1
    return 0
