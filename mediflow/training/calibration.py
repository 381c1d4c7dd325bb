"""Temperature scaling and the decision threshold, both fitted on validation only."""

from __future__ import annotations

import numpy as np

# torch is imported inside the fitting functions: `softmax` is also used by the ONNX serving path,
# which must not load torch.


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising validation NLL of softmax(logits / T) (Guo et al. 2017)."""
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    return t if np.isfinite(t) and 0.05 < t < 20 else 1.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64) / temperature
    return float(torch.nn.functional.cross_entropy(z, torch.as_tensor(labels, dtype=torch.long)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def choose_threshold(p_pos: np.ndarray, is_pos: np.ndarray, min_sensitivity: float = 0.97) -> float:
    """The highest threshold on P(positive) whose validation sensitivity is still >= min_sensitivity.

    Among thresholds meeting the sensitivity floor, the highest one has the best specificity: a
    screening tool must not miss pneumonia, but every false alarm costs a radiologist's time.
    """
    p_pos = np.asarray(p_pos, dtype=np.float64)
    is_pos = np.asarray(is_pos, dtype=bool)
    if is_pos.sum() == 0 or (~is_pos).sum() == 0:
        return 0.5
    scores = np.sort(p_pos[is_pos])  # ascending
    # Keep at least ceil(min_sensitivity * P) positives at or above the threshold.
    need = int(np.ceil(min_sensitivity * len(scores)))
    t = float(scores[len(scores) - need]) if need > 0 else 1.0
    return min(max(t, 1e-6), 1.0)
