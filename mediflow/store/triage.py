"""Worklist orderings derived from one analysis result.

priority: the reported probability of the positive class (PNEUMONIA, centred on the operating point,
          see mediflow/decision.py); the most suspicious study first.
margin:   how far that probability is from the decision threshold (0.5 on that scale); the most uncertain
          study first
          (smallest margin), which is where a radiologist's label teaches the model the most.
"""

from __future__ import annotations

from typing import Any


def triage_scores(result: dict[str, Any], positive_class: str | None) -> tuple[float, float]:
    """(priority, margin) for a Predictor.response() dict."""
    probs: dict[str, float] = result["probabilities"]
    if positive_class in probs:
        p = float(probs[positive_class])
        threshold = result.get("threshold")
        cut = 0.5 if threshold is None else float(threshold)
        return p, abs(p - cut)
    # No positive class (a model over other labels): least confident first for both orderings.
    confidence = float(result["confidence"])
    return 1.0 - confidence, confidence
