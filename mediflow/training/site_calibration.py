"""Site calibration: refit a model's calibration and operating point on a hospital's own labelled
films, without touching its weights (the go-live step of docs/clinical.md).

A model trained at one hospital ranks another hospital's films well before its probabilities and
threshold transfer: the training site's validation split puts the operating point where that
site's films need it. Labelling a few hundred of the new site's films and refitting temperature,
bias and threshold on them moves the operating point to where the new site's films need it.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from mediflow.checkpoint import checkpoint_preprocessing, file_sha256, load_checkpoint, save_checkpoint, weights_sha256
from mediflow.data.dataset import ImageFolderDataset, Samples, check_images, scan_class_folders
from mediflow.decision import choose_threshold, fit_calibration, positive_index, softmax
from mediflow.errors import MediFlowError
from mediflow.metrics import compute_metrics
from mediflow.models.graph import load_graph, run_graph
from mediflow.preprocessing import eval_transform

log = logging.getLogger("mediflow.calibrate")


def samples_logits(ckpt: dict[str, Any], samples: Samples) -> np.ndarray:
    """Raw logits (N, K) of a checkpoint on `samples`, through the preprocessing stored in the
    checkpoint (the serving path's transform), in eager torch like the torch backend. For an
    ensemble: the log of its members' averaged calibrated probabilities (models/graph.py), which
    its own calibration acts on."""
    graph = load_graph(ckpt)
    prep = checkpoint_preprocessing(ckpt)
    loader = DataLoader(ImageFolderDataset(samples, eval_transform(prep)), batch_size=64, num_workers=1)
    return np.concatenate([run_graph(graph, x.numpy())["logits"] for x, _ in loader])


def fit_operating_point(logits: np.ndarray, labels: np.ndarray, class_names: list[str], *,
                        min_sensitivity: float) -> dict[str, Any]:
    """Bias-corrected temperature scaling and the sensitivity-floor threshold fitted on (logits
    (N, K), labels (N,) in class_names order): {"temperature", "logit_bias", "threshold",
    "metrics"} (metrics: compute_metrics at that threshold, on the same films, so optimistic)."""
    labels = np.asarray(labels, dtype=int)
    temperature, bias = fit_calibration(logits, labels)
    probs = softmax(logits, temperature, bias)
    pos = positive_index(class_names)
    threshold = choose_threshold(probs[:, pos], labels == pos, min_sensitivity) if pos is not None else None
    return {"temperature": temperature, "logit_bias": bias, "threshold": threshold,
            "metrics": compute_metrics(labels, probs, class_names, threshold=threshold)}


def calibrated_version(base_version: str, site: str, when: datetime) -> str:
    """The version of a model calibrated at `site`: its base version, then `+cal.<site>.<UTC time>`
    (semantic-versioning build metadata style), so a reading names the calibration that made it."""
    tag = re.sub(r"[^A-Za-z0-9-]+", "-", site).strip("-") or "site"
    return f"{base_version}+cal.{tag}.{when.strftime('%Y%m%dT%H%M%SZ')}"


def mark_calibrated(ckpt: dict[str, Any], source: str | Path, site: str) -> dict[str, Any]:
    """Give a recalibrated checkpoint (read from `source`) a new `version` and its lineage: `calibration`
    = {base_model_sha256 (the file it was calibrated from), base_version, weights_sha256 (the weights,
    unchanged), site, date (UTC)}. A model calibrated again keeps the first base version in its new
    version. Returns `ckpt`, updated."""
    source_sha = file_sha256(source)
    previous = ckpt.get("calibration") or {}
    base_version = str(previous.get("base_version") or ckpt.get("version") or ckpt.get("created") or "unversioned")
    when = datetime.now(UTC).replace(microsecond=0)
    weights = weights_sha256(ckpt, source_sha)
    ckpt.update(weights_sha256=weights, version=calibrated_version(base_version, site, when),
                calibration={"base_model_sha256": source_sha, "base_version": base_version, "weights_sha256": weights,
                             "site": site, "date": when.isoformat()})
    return ckpt


def site_calibrate(path: str | Path, site_dir: str | Path, out: str | Path, *, min_sensitivity: float = 0.97,
                   skip_bad: bool = False, site: str | None = None) -> dict[str, Any]:
    """Refit the checkpoint at `path` on the labelled films in `site_dir` (class folders named like
    the model's classes) and write it to `out`: new temperature, logit bias, threshold and
    threshold rule, plus a `site_calibration` record (film counts, file-list hash, fitted
    metrics), a new version and its lineage (mark_calibrated; `site`: default the folder's name).
    Weights, validation metrics and training record are kept. An ensemble keeps its members' own
    calibrations (they weigh the members in the average) and gets a temperature, bias and
    threshold of its own on the averaged probability. Raises MediFlowError for unknown class
    folders or a class without films."""
    ckpt = load_checkpoint(path)
    names = list(ckpt["class_names"])
    samples = check_images(scan_class_folders(site_dir), skip_bad=skip_bad)
    unknown = set(samples.class_names) - set(names)
    if unknown:
        raise MediFlowError(f"{site_dir}: class folders {sorted(unknown)} are not the model's classes {names}")
    remap = [names.index(n) for n in samples.class_names]
    labels = np.asarray([remap[y] for y in samples.labels])
    if len(np.unique(labels)) < len(names):
        raise MediFlowError(f"{site_dir}: calibration needs films of every class {names}; "
                            f"got {np.bincount(labels, minlength=len(names)).tolist()}")
    fit = fit_operating_point(samples_logits(ckpt, samples), labels, names, min_sensitivity=min_sensitivity)
    pos = positive_index(names)
    m = fit["metrics"]
    ckpt.update(temperature=fit["temperature"], logit_bias=fit["logit_bias"], threshold=fit["threshold"],
                threshold_rule=f"highest threshold on calibrated P({names[pos] if pos is not None else '-'}) keeping "
                               f"sensitivity >= {min_sensitivity} on {len(samples)} labelled films of the site",
                site_calibration={"n": len(samples),
                                  "counts": dict(zip(names, np.bincount(labels, minlength=len(names)).tolist())),
                                  "file_list_sha256": samples.file_list_sha256(), "min_sensitivity": min_sensitivity,
                                  "threshold": fit["threshold"],
                                  "metrics": {k: m.get(k) for k in ("auc", "accuracy", "sensitivity", "specificity")}})
    mark_calibrated(ckpt, path, site or Path(site_dir).resolve().name)
    save_checkpoint(ckpt, out)
    log.info("site-calibrated %s on %d films: T %.3f thr %.4f | AUC %.4f sens %.4f spec %.4f "
             "(on the fitted films) -> %s",
             path, len(samples), fit["temperature"], fit["threshold"] or float("nan"), m["auc"],
             m.get("sensitivity", float("nan")), m.get("specificity", float("nan")), out)
    return ckpt
