"""What a site's validation set may tell the federation: per-class histograms of the model's
logit margin, and what the server fits from their sum (calibration, threshold, metrics); plus the
privacy budget of differentially private rounds.

A histogram is a sum over films, so sites' histograms add up to the federation's, and no film's
score or label leaves a site on its own (a bin holding one film still shows that one score to
within a bin width: docs/federated.md says so)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mediflow.decision import choose_threshold, fit_calibration, positive_index, softmax
from mediflow.metrics import compute_metrics

# Logit margin z_pos - z_neg in [-16, 16] (probabilities 1e-7 .. 1 - 1e-7), bins 0.05 logits wide:
# coarse enough to be an aggregate, fine enough that AUC and threshold barely move (docs/federated.md).
MARGIN_EDGES = np.linspace(-16.0, 16.0, 641)
CENTERS = (MARGIN_EDGES[:-1] + MARGIN_EDGES[1:]) / 2


def margin_histograms(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> tuple[list[int], list[int]]:
    """Counts of validation films per margin bin: (negatives, positives), 640 ints each.
    logits (N, 2) raw (uncalibrated) model outputs; labels (N,) class indices. Margins outside
    [-16, 16] count in the end bins."""
    pos = _positive(class_names)
    margin = logits[:, pos] - logits[:, 1 - pos]
    b = np.clip(np.digitize(margin, MARGIN_EDGES) - 1, 0, len(CENTERS) - 1)
    is_pos = np.asarray(labels) == pos
    return (np.bincount(b[~is_pos], minlength=len(CENTERS)).tolist(),
            np.bincount(b[is_pos], minlength=len(CENTERS)).tolist())


def _positive(class_names: list[str]) -> int:
    pos = positive_index(class_names)
    if len(class_names) != 2 or pos is None:
        raise ValueError(f"federated validation statistics need two classes with a positive one, got {class_names}")
    return pos


def _pseudo_rows(neg: list[int], pos_counts: list[int], class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One row per counted film at its bin centre: logits (N, 2) with margin in the positive column."""
    pos = _positive(class_names)
    neg, pos_counts = np.asarray(neg, dtype=int), np.asarray(pos_counts, dtype=int)
    margins = np.concatenate([np.repeat(CENTERS, neg), np.repeat(CENTERS, pos_counts)])
    y = np.concatenate([np.full(neg.sum(), 1 - pos), np.full(pos_counts.sum(), pos)])
    logits = np.zeros((len(margins), 2))
    logits[:, pos] = margins
    return logits, y


def histogram_auc(neg: list[int], pos_counts: list[int], class_names: list[str]) -> float:
    """ROC AUC from the summed histograms (films in one bin count as ties); nan if a class is absent."""
    logits, y = _pseudo_rows(neg, pos_counts, class_names)
    m = compute_metrics(y, softmax(logits), class_names, threshold=0.5)
    return float(m["auc"])


def fit_from_histograms(neg: list[int], pos_counts: list[int], class_names: list[str], *,
                        min_sensitivity: float, calibrate: bool = True) -> dict[str, Any]:
    """The checkpoint's calibration and threshold, fitted as `mediflow train` fits them (bias-
    corrected temperature scaling, then the highest threshold keeping sensitivity >= the floor) on
    the federation's validation films, seen only through their summed margin histograms.
    Returns temperature, logit_bias, threshold, val_metrics."""
    logits, y = _pseudo_rows(neg, pos_counts, class_names)
    pos = _positive(class_names)
    temperature, bias = fit_calibration(logits, y) if calibrate else (1.0, [0.0, 0.0])
    probs = softmax(logits, temperature, bias)
    threshold = choose_threshold(probs[:, pos], y == pos, min_sensitivity)
    metrics = compute_metrics(y, probs, class_names, threshold=threshold)
    return {"temperature": temperature, "logit_bias": bias, "threshold": threshold, "val_metrics": metrics}


def dp_epsilon(noise_multiplier: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """Site-level (epsilon, delta)-DP of `rounds` rounds of the Gaussian mechanism on clipped site
    updates (Flower's central DP with fixed clipping, McMahan et al. 2018, arXiv:1710.06963), where
    each round samples sites with probability sample_rate; Renyi-DP accounting (Mironov 2017) by
    Opacus's RDP accountant. Returns inf when noise_multiplier is 0."""
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=rounds, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)
