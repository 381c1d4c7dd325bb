"""Which films a training run trained and selected on: the one train/validation split.

Training (`mediflow train`) and everything that later needs the same films (int8 calibration and
its acceptance check, quantization-aware distillation, the input check's pediatric bank) call
`training_split` with the run's settings, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mediflow.checkpoint import checkpoint_members
from mediflow.data.dataset import Samples, check_images, grouped_split, resolve_split_dir, scan_class_folders


def training_split(data: str | Path, *, val_fraction: float = 0.2, seed: int = 0, val_dir: str | Path | None = None,
                   extra_data: Sequence[str | Path] = (), max_train_samples: int | None = None,
                   check: bool = True, skip_bad: bool = False) -> tuple[Samples, Samples]:
    """(train, validation) of the dataset at `data` (its `train/` when there is one): validation is
    `val_dir` when given, else a patient-grouped, class-stratified `val_fraction` of it (seeded);
    `extra_data` folders are added to training only; `max_train_samples` subsamples training
    (seeded). `check`: decode every file first, raising on a bad one, or dropping it with `skip_bad`
    (as training did; the split is computed after the drop)."""
    def scanned(folder: str | Path, min_classes: int = 2) -> Samples:
        samples = scan_class_folders(folder, min_classes=min_classes)
        return check_images(samples, skip_bad=skip_bad) if check else samples

    samples = scanned(resolve_split_dir(data, "train"))
    if val_dir:
        train, val = samples, scanned(val_dir)
    else:
        train, val = grouped_split(samples, val_fraction=val_fraction, seed=seed)
    for extra in extra_data:
        train = train.extend(scanned(extra, min_classes=1))
    if max_train_samples and len(train) > max_train_samples:
        rng = np.random.default_rng(seed)
        train = train.subset(sorted(rng.choice(len(train), max_train_samples, replace=False)))
    return train, val


def checkpoint_split(ckpt: dict[str, Any], data: str | Path) -> tuple[Samples, Samples]:
    """The checkpoint's own (train, validation) of `data`, rebuilt from the settings and seed it
    stores. Files are decoded first only when training skipped bad ones (otherwise every file
    decoded then, and the split does not depend on it)."""
    first = checkpoint_members(ckpt)[0]
    cfg = ckpt.get("train_config") or first.get("train_config") or {}
    seed = int(ckpt.get("seed", first.get("seed", 0)) or 0)
    skip_bad = bool(cfg.get("skip_bad"))
    return training_split(data, val_fraction=float(cfg.get("val_fraction") or 0.2), seed=seed,
                          val_dir=cfg.get("val_dir"), extra_data=cfg.get("extra_data") or (),
                          max_train_samples=cfg.get("max_train_samples"), check=skip_bad, skip_bad=skip_bad)
