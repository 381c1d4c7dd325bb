"""The decision rule: calibrated probabilities, the operating point, the call, and the scale reported.

One module for the rule that training fits, evaluation scores and inference applies, so that the
three cannot drift apart. It sits below every other layer: only numpy is imported at module level
(the ONNX serving path must not load torch; torch is imported inside `fit_calibration`).

The rule, for a binary model with a positive class (PNEUMONIA):
1. calibrated probabilities p = softmax(logits / T + b) (bias-corrected temperature scaling,
   Alexandari et al. 2020), averaged over the members of an ensemble;
2. the call is positive iff p_pos >= t, the operating point chosen on validation as the highest
   threshold that keeps sensitivity >= a floor (`choose_threshold`);
3. what the product reports is p' = sigmoid(logit(p_pos) - logit(t)) ("operating-point-centred"
   probability): the operating point sits at p' = 0.5, so the called class always has the larger
   reported probability and `confidence` (the reported probability of the called class) is >= 0.5.
   Reporting raw p beside a call made at t = 0.94 would answer "NORMAL, confidence 0.07" for
   p = 0.93: a response that contradicts itself. p' is a monotone re-expression of p (same ranking,
   same AUC); raw p = sigmoid(logit(p') + logit(t)) can be recovered from the reported t.
A model with more than two classes (or no stored threshold) is called by argmax and reports p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

REPORTED_SCALE = "operating-point-centred"
# Probabilities are clipped this far from 0 and 1 before taking logits: logit(1) is infinite, and a
# float64 softmax output can be exactly 1.0 for a very confident film.
_EPS = 1e-12


def softmax(logits: np.ndarray, temperature: float = 1.0, bias: list[float] | np.ndarray | None = None
            ) -> np.ndarray:
    """Calibrated probabilities softmax(logits / temperature + bias).

    logits: (N, K) raw model outputs. temperature: > 0. bias: K per-class offsets added after the
    temperature (None: zeros). Returns (N, K) float64 rows summing to 1.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    """Bias-corrected temperature scaling (Alexandari, Kundaje & Shrikumar 2020, "Maximum likelihood
    with bias-corrected calibration is hard-to-beat at label shift adaptation", ICML): the
    temperature T and per-class bias b minimising the NLL of softmax(logits / T + b).

    logits: (N, K) validation logits; labels: (N,) class indices in [0, K). Returns (T, b) with b
    centred to mean 0 (only differences between classes matter); (1.0, zeros) when the fit fails or
    gives an implausible T outside (0.05, 20).

    The bias matters here: class-weighted training (and label smoothing) shift the logits towards
    the rarer NORMAL class, which a temperature alone cannot undo.
    """
    import torch

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
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
    b = (bias - bias.mean()).detach().numpy()
    if not (np.isfinite(t) and 0.05 < t < 20 and np.all(np.isfinite(b))):
        return 1.0, [0.0] * k
    return t, [float(v) for v in b]


def choose_threshold(p_pos: np.ndarray, is_pos: np.ndarray, min_sensitivity: float = 0.97) -> float:
    """The highest threshold on P(positive) whose sensitivity on (p_pos, is_pos) is still >= min_sensitivity.

    p_pos: (N,) calibrated probabilities of the positive class; is_pos: (N,) truth. The call is
    positive iff p >= threshold, so the threshold is one of the positives' scores: the
    ceil(min_sensitivity * P)-th highest (ties at that score are all called positive, which can only
    raise sensitivity). Returns a value in [1e-6, 1]; 0.5 when either class is absent (no basis
    for a choice). Among thresholds meeting the floor the highest has the best specificity: a
    screening tool must not miss pneumonia, but every false alarm costs a radiologist's time.
    """
    p_pos = np.asarray(p_pos, dtype=np.float64)
    is_pos = np.asarray(is_pos, dtype=bool)
    if is_pos.sum() == 0 or (~is_pos).sum() == 0:
        return 0.5
    scores = np.sort(p_pos[is_pos])  # ascending
    need = int(np.ceil(min_sensitivity * len(scores)))
    t = float(scores[len(scores) - need]) if need > 0 else 1.0
    return min(max(t, 1e-6), 1.0)


def positive_index(class_names: list[str], positive_class: str | None = "PNEUMONIA") -> int | None:
    """Index of the positive class for a binary problem (the last class when the name is absent);
    None for any other number of classes."""
    if len(class_names) != 2:
        return None
    if positive_class in class_names:
        return class_names.index(positive_class)
    return 1


def decide(probs: np.ndarray, threshold: float | None, pos: int | None) -> np.ndarray:
    """(N, K) calibrated probabilities -> (N,) class indices: the positive class when its
    probability >= threshold, else the other; argmax when there is no positive class or threshold."""
    probs = np.asarray(probs)
    if pos is None or threshold is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, pos] >= threshold, pos, 1 - pos)


def centred(p_pos: np.ndarray | float, threshold: float) -> np.ndarray:
    """The operating-point-centred probability p' = sigmoid(logit(p) - logit(threshold)).

    p_pos: calibrated P(positive), any shape, in [0, 1]; threshold in [0, 1]. Returns float64 of the
    same shape in [0, 1], non-decreasing in p, exactly 0.5 at p == threshold, and >= 0.5 exactly
    when p >= threshold (enforced after the arithmetic, so that rounding near the operating point,
    or a threshold of 0 or 1, can never put p' on the other side of 0.5 than the call).
    """
    p = np.asarray(p_pos, dtype=np.float64)
    pc = np.clip(p, _EPS, 1 - _EPS)
    tc = min(max(float(threshold), _EPS), 1 - _EPS)
    z = (np.log(pc) - np.log1p(-pc)) - (np.log(tc) - np.log1p(-tc))
    q = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow warnings
    below = np.nextafter(0.5, 0.0)
    return np.where(p >= threshold, np.maximum(q, 0.5), np.minimum(q, below))


@dataclass(frozen=True)
class DecisionRule:
    """A model's decision rule, read from its checkpoint (or ONNX export metadata) at load time.

    temperature, logit_bias: calibration applied to the network's logits. An ensemble's graph
    outputs the log of its members' averaged calibrated probabilities; its own temperature and bias
    are 1 and none until a site calibration refits them on those log-probabilities. threshold: the
    operating point on calibrated P(positive), None for multi-class models. pos: index of the
    positive class, None unless binary.
    """

    class_names: tuple[str, ...]
    temperature: float = 1.0
    logit_bias: tuple[float, ...] | None = None
    threshold: float | None = None
    pos: int | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> DecisionRule:
        """From a checkpoint dict or an ONNX export's metadata (the checkpoint without weights).
        Works for every stored checkpoint: nothing beyond class names, temperature, logit bias and
        threshold is read."""
        names = tuple(ckpt["class_names"])
        bias = None if ckpt.get("logit_bias") is None else tuple(float(b) for b in ckpt["logit_bias"])
        pos = positive_index(list(names), ckpt.get("positive_class") or "PNEUMONIA")
        threshold = ckpt.get("threshold")
        return cls(class_names=names,
                   temperature=float(ckpt.get("temperature") or 1.0),
                   logit_bias=bias,
                   threshold=None if pos is None or threshold is None else float(threshold),
                   pos=pos)

    @property
    def centred(self) -> bool:
        """True when probabilities are reported on the operating-point-centred scale."""
        return self.pos is not None and self.threshold is not None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, K) logits -> (N, K) calibrated probabilities."""
        return softmax(logits, self.temperature, None if self.logit_bias is None else list(self.logit_bias))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(N, K) calibrated probabilities -> (N,) called class indices."""
        return decide(probs, self.threshold, self.pos)

    def margin(self, logits: np.ndarray) -> np.ndarray:
        """(N, K) raw logits -> (N,) how far each image is from the other call, in calibrated logit
        units: logit(p) - logit(threshold) of the calibrated P(positive) for a binary model with an
        operating point (>= 0 exactly when the positive class is called), else log p(top class) -
        log p(runner-up) (>= 0). Its absolute value is how far the logits may move before the call
        changes: the band in which an int8 model defers to fp32."""
        probs = np.clip(self.probabilities(np.asarray(logits, dtype=np.float64)), _EPS, 1.0)
        if self.centred:
            p = np.clip(probs[:, self.pos], _EPS, 1 - _EPS)
            t = min(max(float(self.threshold), _EPS), 1 - _EPS)
            return (np.log(p) - np.log1p(-p)) - (np.log(t) - np.log1p(-t))
        top2 = np.sort(np.log(probs), axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0] if probs.shape[1] > 1 else np.full(len(probs), np.inf)

    def reported(self, probs: np.ndarray) -> np.ndarray:
        """(N, K) calibrated probabilities -> (N, K) probabilities on the reported scale: centred on the
        operating point for a binary model with a threshold, unchanged otherwise. Their argmax (ties
        to the positive class) is the call."""
        probs = np.asarray(probs, dtype=np.float64)
        if not self.centred:
            return probs
        q = centred(probs[:, self.pos], self.threshold)
        out = np.empty_like(probs)
        out[:, self.pos] = q
        out[:, 1 - self.pos] = 1.0 - q
        return out

    def finding(self, probs_row: np.ndarray, review_below: float, digits: int = 4) -> dict[str, Any]:
        """One image's calibrated probabilities (K,) -> the response's decision fields: prediction,
        confidence (the reported probability of the called class, >= 0.5 for a binary model),
        probabilities (reported scale, rounded to `digits`; the positive class is shown >= 0.5 exactly
        when it is called), needs_review (confidence below
        `review_below`, judged on the rounded value shown), threshold (0.5 on the centred scale) and
        operating_point (the calibrated threshold, to recover raw probabilities)."""
        probs_row = np.asarray(probs_row, dtype=np.float64)
        idx = int(self.decide(probs_row[None, :])[0])
        shown = self.reported(probs_row[None, :])[0]
        probabilities = {n: round(float(p), digits) for n, p in zip(self.class_names, shown)}
        if self.centred and idx != self.pos and probabilities[self.class_names[self.pos]] >= 0.5:
            # p' just under 0.5 must not be shown as 0.5 (the threshold) beside a negative call.
            step = 10.0 ** -digits
            probabilities[self.class_names[self.pos]] = round(0.5 - step, digits)
            probabilities[self.class_names[idx]] = round(0.5 + step, digits)
        # The called class's shown value, not a separately rounded copy: the two must be equal.
        confidence = probabilities[self.class_names[idx]]
        out: dict[str, Any] = {
            "prediction": self.class_names[idx],
            "confidence": confidence,
            "probabilities": probabilities,
            "needs_review": confidence < review_below,
            "threshold": 0.5 if self.centred else None,
            "operating_point": self.operating_point(),
        }
        return out

    def operating_point(self) -> dict[str, Any] | None:
        """{positive_class, calibrated_threshold, scale} for the centred scale; None for argmax models."""
        if not self.centred:
            return None
        return {"positive_class": self.class_names[self.pos], "calibrated_threshold": round(float(self.threshold), 6),
                "scale": REPORTED_SCALE}
