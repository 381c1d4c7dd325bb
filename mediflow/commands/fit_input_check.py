"""`mediflow fit-input-check [--model M] --data DATA --adult ADULT_DIR`: refit the input check's statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("fit-input-check", help="fit the input check (chest-film distribution, adult classifier)",
                       description="Fit the statistics of the input check (docs/input_check.md) on the model's "
                                   "pooled features: pediatric films of the training part of the checkpoint's own "
                                   "split of --data, adult films of one half (by patient) of --adult. Writes "
                                   "<model stem>.input_check.npz next to the model, which the predictor loads.")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--data", help="the training dataset root (default: the path stored in the checkpoint)")
    p.add_argument("--adult", required=True, help="folder of adult chest films (e.g. ../shared/data/nih_adult; "
                                                  "a labels.csv with age_years leaves out films of patients under 18)")
    p.add_argument("--out", help="statistics file (default: <model stem>.input_check.npz next to the model)")
    p.add_argument("--cache",
                   help="an .npz to keep pooled features in between runs (e.g. runs/input_check_features.npz)")
    p.add_argument("--pediatric", type=int, default=1600, help="training films to fit on (at most and by default 1600)")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.errors import MediFlowError
    from mediflow.inference.bundled import default_model_path
    from mediflow.inference.input_check import stats_path
    from mediflow.inference.input_check_fit import describe, fit_for_model
    from mediflow.inference.predictor import Predictor

    model = default_model_path(args.model)
    predictor = Predictor.load(model)
    data = args.data or (predictor.ckpt.get("train_config") or {}).get("data")
    if not (data and Path(data).is_dir()):
        raise MediFlowError(f"--data: the training dataset is needed ({data or 'no path stored in the checkpoint'} "
                            "not found)")
    if not Path(args.adult).is_dir():
        raise MediFlowError(f"--adult {args.adult}: no such folder")
    out = Path(args.out) if args.out else stats_path(model)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rfeatures {done}/{total}", end="", file=sys.stderr, flush=True)

    stats = fit_for_model(predictor, data, args.adult, out, cache=args.cache, n_pediatric=args.pediatric,
                          progress=progress)
    print(f"wrote {out}: {describe(stats)}")
    return 0
