"""`mediflow calibrate --model M --data SITE_DIR|ROOT [--out M2] [--min-sensitivity 0.97]`"""

from __future__ import annotations

import argparse
from pathlib import Path


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="refit a model's calibration and operating point (weights unchanged)",
                       description="Go-live step at a new site: with --data SITE_DIR (class folders NORMAL/ and "
                                   "PNEUMONIA/ of 200-300 of the site's own labelled films), refit temperature, bias "
                                   "and threshold on those films. With --data ROOT holding train/ (the training "
                                   "data), refit them on the model's own validation split instead.")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the site's labelled films (class folders), or the training root")
    p.add_argument("--out", help="write here instead of overwriting --model")
    p.add_argument("--min-sensitivity", type=_fraction, default=0.97,
                   help="threshold rule: the highest threshold keeping sensitivity >= this on those films (0-1]")
    p.add_argument("--site", help="name of the site, kept in the model's lineage and new version (default: the "
                                  "--data folder's name)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files instead of stopping")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.inference.input_check import carry_statistics

    out = args.out or args.model
    if (Path(args.data) / "train").is_dir():
        from mediflow.training.ensemble import recalibrate

        ckpt = recalibrate(args.model, args.data, out, min_sensitivity=args.min_sensitivity, site=args.site)
    else:
        from mediflow.training.site_calibration import site_calibrate

        ckpt = site_calibrate(args.model, args.data, out, min_sensitivity=args.min_sensitivity,
                              skip_bad=args.skip_bad, site=args.site)
    print(f"wrote {out}: version {ckpt['version']} (weights unchanged; calibrated from "
          f"{ckpt['calibration']['base_model_sha256'][:12]}..., site {ckpt['calibration']['site']}); "
          f"threshold {ckpt['threshold'] if ckpt['threshold'] is None else round(ckpt['threshold'], 4)}; "
          f"re-export it (mediflow export --model {out}) before serving ONNX")
    # The weights are unchanged, so the input check's statistics still hold: keep them beside the copy.
    carried = carry_statistics(args.model, out)
    if carried is not None:
        print(f"input-check statistics copied to {carried}")
    return 0
