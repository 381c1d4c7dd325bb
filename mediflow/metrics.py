"""Classification metrics with PNEUMONIA as the positive class (binary) or macro-averaged (multi-class).

Below training, inference and evaluation, beside the decision rule: model selection, the int8
acceptance check, site calibration and reports all score with this one function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mediflow.decision import decide, positive_index


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str], *, threshold: float | None,
    positive_class: str | None = "PNEUMONIA",
) -> dict[str, Any]:
    # Imported here: `decide` serves every request, and the server should not load scikit-learn.
    from sklearn.metrics import (
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    pos = positive_index(class_names, positive_class)
    preds = decide(probs, threshold, pos)
    present = np.unique(labels)
    prec, rec, f1, sup = precision_recall_fscore_support(
        labels, preds, labels=list(range(k)), zero_division=0
    )
    cm = confusion_matrix(labels, preds, labels=list(range(k)))
    out: dict[str, Any] = {
        "n": int(len(labels)),
        "class_names": list(class_names),
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)) if len(present) > 1 else float("nan"),
        "threshold": None if threshold is None else float(threshold),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(sup[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }
    if pos is not None:
        out["positive_class"] = class_names[pos]
        tp, fn = cm[pos, pos], cm[pos, 1 - pos]
        tn, fp = cm[1 - pos, 1 - pos], cm[1 - pos, pos]
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else float("nan")
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else float("nan")
        out["auc"] = float(roc_auc_score(labels == pos, probs[:, pos])) if len(present) > 1 else float("nan")
    else:
        out["auc"] = (
            float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(k))))
            if len(present) == k else float("nan")
        )
    return out
