"""The `probe` recipe's head: an L2-regularised logistic regression on frozen, pooled backbone
features of several augmented views of each training film (a "linear probe").

Why a probe and not fine-tuning: on the Kermany data, fine-tuning learns how the training films are
framed and exposed as much as what the lungs show (validation AUC 0.998 from the same films, 0.913
on films acquired apart). A frozen ImageNet backbone with a heavily regularised linear head cannot
re-learn its features around those cues, and features averaged over augmented views (framing,
exposure, encoding) leave the head little reason to use them (Kumar et al. 2022, "Fine-Tuning can
Distort Pretrained Features and Underperform Out-of-Distribution").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_linear_probe(views: Sequence[np.ndarray], labels: np.ndarray, *, c: float,
                     class_weight: np.ndarray | None = None, max_iter: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Fit a multinomial logistic regression on standardised features and fold the standardisation
    into the returned linear layer, so it applies to raw pooled features.

    views: V arrays (N, D) of pooled features, one per augmented view of the same N films (float).
    labels: (N,) class indices in [0, K). c: scikit-learn's inverse L2 strength C (> 0; smaller =
    stronger regularisation). class_weight: (K,) loss weight per class, or None for inverse class
    frequency ("balanced").
    Returns (weight (K, D), bias (K,)) float32 for `nn.Linear(D, K)`: logits = x @ weight.T + bias.
    For K = 2 the two rows are +-half of the binary coefficients, so the logit difference equals
    the binary model's log-odds. Raises ValueError for c <= 0, empty views or a single class.
    """
    from sklearn.linear_model import LogisticRegression

    if c <= 0:
        raise ValueError(f"the probe's C must be positive, got {c}")
    if not views:
        raise ValueError("no feature views to fit on")
    labels = np.asarray(labels, dtype=int)
    k = int(labels.max()) + 1
    if len(np.unique(labels)) < 2:
        raise ValueError("the probe needs at least two classes in its training data")
    x = np.concatenate([np.asarray(v, dtype=np.float64) for v in views])
    y = np.tile(labels, len(views))
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    weights = None if class_weight is None else {i: float(w) for i, w in enumerate(class_weight)}
    clf = LogisticRegression(C=c, class_weight=weights or "balanced", max_iter=max_iter)
    clf.fit((x - mean) / std, y)
    coef, intercept = clf.coef_, clf.intercept_
    if k == 2:  # scikit-learn's binary model: one row for class 1
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = coef / std
    bias = intercept - (coef * (mean / std)).sum(axis=1)
    return weight.astype(np.float32), bias.astype(np.float32)
