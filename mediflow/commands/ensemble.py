"""`mediflow ensemble --data ROOT --out ens.pth a.pth b.pth ...`"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("ensemble", help="average several trained models into one ensemble checkpoint",
                       description="Members must share the validation split (same --data, --seed, --val-fraction); "
                                   "the ensemble's threshold is chosen on it.")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--data", required=True, help="the training root the members were trained on")
    p.add_argument("--out", required=True)
    p.add_argument("--min-sensitivity", type=float, default=0.97)
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.training.ensemble import build_ensemble

    build_ensemble(args.models, args.data, args.out, min_sensitivity=args.min_sensitivity)
    return 0
