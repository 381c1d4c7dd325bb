"""`mediflow predict [--model model.pth] IMAGE...`: one JSON object per image on stdout."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict images; one JSON object per image",
                       description="Print one JSON line per image. Unreadable images print an error object "
                                   "and make the exit status 1.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--review-below", type=float, default=0.70, help="confidence under which needs_review is set")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.data.images import image_notes, load_image
    from mediflow.errors import ImageDecodeError
    from mediflow.inference.predictor import Predictor

    predictor = Predictor.load(args.model, review_below=args.review_below)
    status = 0
    for path in args.images:
        try:
            img = load_image(path)
            result = {"file": path, **predictor.predict_image(img)}
            if image_notes(img):
                result["notes"] = image_notes(img)
        except ImageDecodeError as exc:
            result = {"file": path, "error": str(exc)}
            status = 1
        print(json.dumps(result), flush=True)
    if status:
        print("mediflow predict: error: some images could not be read (see their 'error' field)", file=sys.stderr)
    return status
