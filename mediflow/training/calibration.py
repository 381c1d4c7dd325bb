"""Temperature scaling and the decision threshold, both fitted on validation only."""

from __future__ import annotations

import numpy as np

# torch is imported inside the fitting functions: `softmax` is also used by the ONNX serving path,
# which must not load torch.


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    """Bias-corrected temperature scaling: T and a per-class bias b minimising the validation NLL
    of softmax(logits / T + b) (Alexandari et al. 2020).

    The bias matters here: class-weighted training (and label smoothing) shift the logits towards
    the rarer NORMAL class, which a temperature alone cannot undo; without it a PNEUMONIA call
    could carry a 'confidence' of 10%.
    """
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    k = z.shape[1]
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, bias], lr=0.1, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp() + bias, y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    b = (bias - bias.mean()).detach().numpy()  # only differences between classes matter
    if not (np.isfinite(t) and 0.05 < t < 20 and np.all(np.isfinite(b))):
        return 1.0, [0.0] * k
    return t, [float(v) for v in b]


def softmax(logits: np.ndarray, temperature: float = 1.0, bias: list[float] | None = None) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T + bias)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float64)
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
