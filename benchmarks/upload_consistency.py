"""Does a full-resolution upload get the answer its training copy gets?

The training images are 224x224 JPEG copies (quality 75) of the hospital's films; doctors upload the
full-resolution films. For each film in `fullres_samples/` (train images, so their 224 copies are in
`chest_xray224/train/`), this compares P(PNEUMONIA) of the served path (full-resolution decode, the
model's own preprocessing) with P(PNEUMONIA) of the 224 copy, with the preprocessing's JPEG step
(`source_jpeg_quality`) off and on, and prints a table: mean and max |dP|, and how many decisions
at the model's threshold differ from the copy's.

    python benchmarks/upload_consistency.py [--model PATH] [--backend onnx|torch]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from mediflow.data.images import load_image
from mediflow.inference.predictor import Predictor

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint or ONNX export (default: the bundled model)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--quality", type=int, default=75, help="JPEG quality of the 'on' row (default 75)")
    args = ap.parse_args(argv)

    films = sorted((args.data / "fullres_samples").glob("*/*.jpeg"))
    copies = [args.data / "chest_xray224" / "train" / f.parent.name / f.name for f in films]
    if not films or not all(c.is_file() for c in copies):
        print(f"needs {args.data}/fullres_samples and the matching chest_xray224/train copies", file=sys.stderr)
        return 2
    p = Predictor.load(args.model, backend=args.backend)
    uploads = [p.load_image(f).image for f in films]  # the serving decode (JPEG draft mode)
    ref = p.probabilities_from_images([load_image(c).image for c in copies])[:, p.pos]
    print(f"model: {p.info.architecture} ({p.backend_name}), threshold {p.threshold:.4f}, "
          f"{len(films)} full-resolution films vs their 224 px training copies")
    print(f"{'preprocessing of the upload':<38} {'mean |dP|':>10} {'max |dP|':>10} {'decisions differ':>17}")
    for label, quality in (("resize only", None), (f"resize + JPEG q{args.quality}", args.quality)):
        p.prep = dataclasses.replace(p.prep, source_jpeg_quality=quality)
        got = p.probabilities_from_images(uploads)[:, p.pos]
        d = np.abs(got - ref)
        flips = int(((got >= p.threshold) != (ref >= p.threshold)).sum())
        print(f"{label:<38} {d.mean():>10.4f} {d.max():>10.4f} {flips:>11d} / {len(films)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
