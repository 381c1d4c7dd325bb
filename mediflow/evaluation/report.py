"""Evaluation reports: metrics.json, predictions.csv, confusion_matrix.png, roc.png, a terminal table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np


def write_report(out_dir: str | Path, metrics: dict[str, Any], files: list[str], labels: np.ndarray,
                 probs: np.ndarray, preds: np.ndarray, class_names: list[str], pos: int | None, *,
                 subject: str = "") -> Path:
    """`subject`: which model on which films (e.g. 'efficientnet_lite0 v1 on chest_xray224/test_dev'),
    shown under each plot's title."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        col = f"probability_{class_names[pos]}" if pos is not None else "probability"
        w.writerow(["file", "label", col, "prediction"])
        for name, y, p, yhat in zip(files, labels, probs, preds):
            w.writerow([name, class_names[y], f"{(p[pos] if pos is not None else p[yhat]):.6f}", class_names[yhat]])
    _plot_confusion(out / "confusion_matrix.png", np.asarray(metrics["confusion_matrix"]), class_names, subject)
    if pos is not None and len(np.unique(labels)) > 1:
        _plot_roc(out / "roc.png", labels == pos, probs[:, pos], metrics, subject)
    return out


def _title(kind: str, subject: str) -> str:
    return f"{kind}\n{subject}" if subject else kind


def _plot_confusion(path: Path, cm: np.ndarray, names: list[str], subject: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=12)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(_title("Confusion matrix", subject), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_roc(path: Path, is_pos: np.ndarray, score: np.ndarray, metrics: dict[str, Any], subject: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(is_pos, score)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(fpr, tpr, label=f"AUC {metrics['auc']:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    if "sensitivity" in metrics:
        ax.plot(1 - metrics["specificity"], metrics["sensitivity"], "o", color="red",
                label=f"threshold {metrics['threshold']:.4f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(_title("ROC", subject), fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(metrics: dict[str, Any]) -> str:
    """The tables the original design printed: headline metrics, per-class precision/recall/F1, confusion matrix."""
    names = metrics["class_names"]
    thr = metrics.get("threshold")
    lines = [f"Evaluated {metrics['n']} images "
             f"(threshold {'highest score' if thr is None else format(thr, '.4f')})", ""]
    for key in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity"):
        if key in metrics:
            lines.append(f"  {key:<18} {metrics[key]:.4f}")
    lines += ["", f"  {'class':<12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for n in names:
        pc = metrics["per_class"][n]
        lines.append(f"  {n:<12} {pc['precision']:>9.4f} {pc['recall']:>9.4f} {pc['f1']:>9.4f} {pc['support']:>8d}")
    lines += ["", "  confusion matrix (rows actual, columns predicted)",
              "  " + " " * 12 + "".join(f"{n:>12}" for n in names)]
    for n, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"  {n:<12}" + "".join(f"{v:>12d}" for v in row))
    return "\n".join(lines)
