"""`mediflow calibrate --model M --data ROOT [--out M2] [--min-sensitivity 0.97]`"""

from __future__ import annotations

import argparse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="refit a model's calibration and threshold on its validation split",
                       description="Recomputes the validation split the model was selected on (checked by "
                                   "fingerprint) and refits temperature, bias and threshold; weights unchanged.")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the training root the model was trained on")
    p.add_argument("--out", help="write here instead of overwriting --model")
    p.add_argument("--min-sensitivity", type=_fraction, default=0.97,
                   help="threshold rule: the highest threshold keeping validation sensitivity >= this (0-1]")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.training.ensemble import recalibrate

    recalibrate(args.model, args.data, args.out or args.model, min_sensitivity=args.min_sensitivity)
    return 0
