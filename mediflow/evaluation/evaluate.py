"""Evaluate a checkpoint on a labelled class-folder dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mediflow.data.dataset import ImageFolderDataset, check_images, resolve_split_dir, scan_class_folders
from mediflow.errors import DatasetError
from mediflow.evaluation.report import write_report
from mediflow.inference.predictor import Predictor
from mediflow.metrics import compute_metrics


def display_dataset(folder: str | Path) -> str:
    """A data set's name for titles: its last two path parts (e.g. chest_xray224/test_dev)."""
    parts = Path(folder).resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(folder)


def evaluate(predictor: Predictor, data: str | Path, out_dir: str | Path | None, *, batch_size: int = 64,
             workers: int = 1, skip_bad: bool = False, progress: bool = True) -> dict[str, Any]:
    samples = scan_class_folders(resolve_split_dir(data, "test"), min_classes=1)
    unknown = set(samples.class_names) - set(predictor.class_names)
    if unknown:
        raise DatasetError(f"{data}: classes {sorted(unknown)} are not among the model's {predictor.class_names}")
    samples = check_images(samples, skip_bad=skip_bad)
    # Map folder labels onto the model's class order.
    remap = [predictor.class_names.index(n) for n in samples.class_names]
    labels = np.asarray([remap[y] for y in samples.labels])
    ds = ImageFolderDataset(samples, predictor.preprocess)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    chunks = []
    with torch.inference_mode():
        for x, _ in tqdm(loader, desc="evaluate", disable=not progress):
            chunks.append(predictor.probabilities_from_tensors(x))
    probs = np.concatenate(chunks)
    metrics = compute_metrics(labels, probs, predictor.class_names, threshold=predictor.threshold,
                              positive_class=(predictor.class_names[predictor.pos]
                                              if predictor.pos is not None else None))
    metrics["model"] = {"architecture": predictor.info.architecture, "sha256": predictor.info.sha256}
    metrics["data"] = str(data)
    if out_dir is not None:
        files = [str(p.relative_to(samples.paths[0].parent.parent)) if p.is_relative_to(samples.paths[0].parent.parent)
                 else str(p) for p in samples.paths]
        # Plot titles name the model and the films: a PNG passed around alone still says what it shows.
        subject = (f"{predictor.info.architecture} {predictor.info.version} on "
                   f"{display_dataset(resolve_split_dir(data, 'test'))} ({len(labels)} films)")
        write_report(out_dir, metrics, files, labels, probs, predictor.decide(probs), predictor.class_names,
                     predictor.pos, subject=subject)
    return metrics
