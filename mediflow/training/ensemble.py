"""Combine trained checkpoints into one ensemble checkpoint (averaged calibrated probabilities).

Members must have been trained with the same validation split (same data, seed and fraction):
the ensemble's threshold is chosen on that split's averaged probabilities, never on data any
member trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mediflow.checkpoint import ENSEMBLE_FORMAT, load_checkpoint, save_checkpoint
from mediflow.data.splits import checkpoint_split
from mediflow.decision import choose_threshold, positive_index, softmax
from mediflow.errors import MediFlowError
from mediflow.metrics import compute_metrics
from mediflow.training.site_calibration import fit_operating_point, mark_calibrated, samples_logits

log = logging.getLogger("mediflow.ensemble")


def member_val_probs(ckpt: dict[str, Any], data: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A member's calibrated validation probabilities, on the split it was trained against."""
    logits, labels = val_logits(ckpt, data)
    return softmax(logits, float(ckpt.get("temperature") or 1.0), ckpt.get("logit_bias")), labels


def val_logits(ckpt: dict[str, Any], data: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A model's raw validation logits, on the split it was selected on (checked by fingerprint)."""
    _, val = checkpoint_split(ckpt, data)
    if val.file_list_sha256() != ckpt.get("val_file_list_sha256"):
        raise MediFlowError(f"{data}: this validation split is not the one the {ckpt['architecture']} model "
                            "was selected on (different data, seed or --val-dir)")
    return samples_logits(ckpt, val), np.asarray(val.labels)


def recalibrate(path: str | Path, data: str | Path, out: str | Path, *, min_sensitivity: float = 0.97,
                site: str | None = None) -> dict:
    """Refit calibration and threshold of a trained model on its own validation split (e.g. for
    another sensitivity floor) without retraining; a new version and its lineage (mark_calibrated;
    `site`: default the data folder's name)."""
    ckpt = load_checkpoint(path)
    names = ckpt["class_names"]
    logits, labels = val_logits(ckpt, data)
    fit = fit_operating_point(logits, labels, names, min_sensitivity=min_sensitivity)
    temperature, bias, threshold, metrics = fit["temperature"], fit["logit_bias"], fit["threshold"], fit["metrics"]
    pos = positive_index(names)
    ckpt.update(temperature=temperature, logit_bias=bias, threshold=threshold, val_metrics=metrics,
                best_val_acc=metrics["balanced_accuracy"],
                threshold_rule=f"highest threshold on calibrated P({names[pos] if pos is not None else '-'}) keeping "
                               f"validation sensitivity >= {min_sensitivity}")
    ckpt.setdefault("train_config", {})["min_sensitivity"] = min_sensitivity
    mark_calibrated(ckpt, path, site or Path(data).resolve().name)
    save_checkpoint(ckpt, out)
    log.info("recalibrated %s: T %.3f bias %s thr %.4f | val AUC %.4f bal acc %.4f sens %.4f spec %.4f -> %s",
             path, temperature, [round(b, 3) for b in bias], threshold or float("nan"), metrics["auc"],
             metrics["balanced_accuracy"], metrics.get("sensitivity", float("nan")),
             metrics.get("specificity", float("nan")), out)
    return ckpt


def build_ensemble(paths: list[str | Path], data: str | Path, out: str | Path, *,
                   min_sensitivity: float = 0.97) -> dict[str, Any]:
    if len(paths) < 2:
        raise MediFlowError("an ensemble needs at least two models")
    members = [load_checkpoint(p) for p in paths]
    names = members[0]["class_names"]
    if any(m["class_names"] != names for m in members):
        raise MediFlowError("members have different class names")
    per_member, labels = [], None
    for p, m in zip(paths, members):
        probs, y = member_val_probs(m, data)
        labels = y
        per_member.append(probs)
        log.info("member %s: val AUC %.4f", Path(p).name, compute_metrics(y, probs, names, threshold=None)["auc"])
    avg = np.mean(per_member, axis=0)
    pos = positive_index(names)
    threshold = choose_threshold(avg[:, pos], labels == pos, min_sensitivity) if pos is not None else None
    metrics = compute_metrics(labels, avg, names, threshold=threshold)
    ckpt = {
        "format": ENSEMBLE_FORMAT,
        "members": members,
        "class_names": names,
        "architecture": "ensemble",
        "positive_class": names[pos] if pos is not None else None,
        "threshold": threshold,
        "threshold_rule": f"highest threshold on the members' mean calibrated probability keeping validation "
                          f"sensitivity >= {min_sensitivity}",
        "temperature": 1.0,
        "val_metrics": metrics,
        "best_val_acc": metrics["balanced_accuracy"],
        "epoch": max(int(m.get("epoch", 0)) for m in members),
        "seed": members[0].get("seed"),
        "train_config": {"recipe": "ensemble", "members": [str(p) for p in paths], "min_sensitivity": min_sensitivity},
        "preprocessing": members[0].get("preprocessing", {}),
    }
    save_checkpoint(ckpt, out)
    log.info("ensemble of %d: val AUC %.4f balanced acc %.4f sens %.4f spec %.4f thr %.4f -> %s", len(members),
             metrics["auc"], metrics["balanced_accuracy"], metrics["sensitivity"], metrics["specificity"],
             threshold, out)
    return ckpt
