"""Load a checkpoint (single model or ensemble) and turn images into the API's response.

Probabilities are softmax(logits / temperature + bias), averaged over ensemble members; the decision is
PNEUMONIA when its probability reaches the checkpoint's validation-chosen threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mediflow import DISCLAIMER
from mediflow.checkpoint import ENSEMBLE_FORMAT, file_sha256, load_checkpoint
from mediflow.data.images import decode_image
from mediflow.errors import CheckpointError
from mediflow.evaluation.metrics import decide, positive_index
from mediflow.inference.bundled import default_model_path
from mediflow.models.registry import MediFlowNet, build_model
from mediflow.preprocessing import PreprocessConfig, eval_transform
from mediflow.training.calibration import softmax

DEFAULT_REVIEW_BELOW = 0.70


class TorchMember:
    """One network of a checkpoint, run in eager PyTorch."""

    def __init__(self, ckpt: dict[str, Any], device: torch.device):
        try:
            self.model: MediFlowNet = build_model(ckpt["architecture"], len(ckpt["class_names"]), weights=None)
            self.model.load_state_dict(ckpt["state_dict"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint does not match its architecture ({str(exc).splitlines()[0][:200]})") from None
        self.model.eval().to(device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.device = device
        self.prep = PreprocessConfig.from_dict(ckpt.get("preprocessing", {}))
        self.temperature = float(ckpt.get("temperature") or 1.0)
        self.logit_bias: list[float] | None = ckpt.get("logit_bias")
        self.architecture = ckpt["architecture"]

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Logits -> calibrated probabilities, with the calibration fitted on validation."""
        return softmax(logits, self.temperature, self.logit_bias)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model(x).float().cpu().numpy()


@dataclass
class ModelInfo:
    architecture: str
    version: str
    sha256: str
    path: str


class Predictor:
    def __init__(self, ckpt: dict[str, Any], *, device: str = "cpu", review_below: float = DEFAULT_REVIEW_BELOW,
                 path: Path | None = None):
        self.ckpt = ckpt
        self.device = torch.device(device)
        members = ckpt["members"] if ckpt.get("format") == ENSEMBLE_FORMAT else [ckpt]
        self.members = [TorchMember(m, self.device) for m in members]
        self.class_names: list[str] = list(ckpt["class_names"])
        if any(list(m["class_names"]) != self.class_names for m in members):
            raise CheckpointError("ensemble members disagree on class names")
        self.pos = positive_index(self.class_names, ckpt.get("positive_class") or "PNEUMONIA")
        self.threshold: float | None = ckpt.get("threshold")
        # An ensemble's own temperature applies on top of its members' averaged probabilities.
        self.temperature = float(ckpt.get("temperature") or 1.0) if len(self.members) == 1 else 1.0
        self.review_below = review_below
        self.prep = self.members[0].prep
        self._transforms = {id(m): eval_transform(m.prep) for m in self.members}
        sha = file_sha256(path) if path else ""
        arch = ckpt["architecture"] if len(self.members) == 1 else "ensemble(" + ",".join(m.architecture for m in self.members) + ")"
        self.info = ModelInfo(architecture=arch, version=str(ckpt.get("version") or ckpt.get("created", "")),
                              sha256=sha, path=str(path or ""))

    @classmethod
    def load(cls, path: str | Path | None = None, **kwargs) -> "Predictor":
        p = default_model_path(path)
        return cls(load_checkpoint(p), path=p, **kwargs)

    # -- arrays ---------------------------------------------------------------------------------
    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return self._transforms[id(self.members[0])](img)

    def probabilities_from_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """(N, 3, S, S) preprocessed batch -> (N, K) calibrated probabilities."""
        probs = [m.calibrate(m.logits(batch)) for m in self.members]
        return np.mean(probs, axis=0)

    def probabilities_from_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.probabilities_from_tensors(torch.stack([self.preprocess(im) for im in images]))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return decide(probs, self.threshold, self.pos)

    # -- responses -------------------------------------------------------------------------------
    def response(self, probs: np.ndarray, inference_ms: float) -> dict[str, Any]:
        """One image's probabilities -> the design's response plus MediFlow's extra fields."""
        idx = int(self.decide(probs[None, :])[0])
        confidence = float(probs[idx])
        return {
            "prediction": self.class_names[idx],
            "confidence": round(confidence, 4),
            "disclaimer": DISCLAIMER,
            "probabilities": {n: round(float(p), 4) for n, p in zip(self.class_names, probs)},
            "needs_review": confidence < self.review_below,
            "threshold": None if self.threshold is None else round(float(self.threshold), 4),
            "model": {"architecture": self.info.architecture, "version": self.info.version, "sha256": self.info.sha256},
            "inference_ms": round(inference_ms, 2),
        }

    def predict_image(self, img: Image.Image) -> dict[str, Any]:
        t0 = time.perf_counter()
        probs = self.probabilities_from_images([img])[0]
        return self.response(probs, (time.perf_counter() - t0) * 1000)

    def predict_bytes(self, data: bytes, *, name: str = "upload", max_pixels: int | None = None) -> dict[str, Any]:
        kwargs = {"max_pixels": max_pixels} if max_pixels else {}
        t0 = time.perf_counter()
        img = decode_image(data, name=name, **kwargs)
        probs = self.probabilities_from_images([img])[0]
        return self.response(probs, (time.perf_counter() - t0) * 1000)

    def model_card(self) -> dict[str, Any]:
        c = self.ckpt
        return {
            "architecture": self.info.architecture,
            "version": self.info.version,
            "sha256": self.info.sha256,
            "classes": self.class_names,
            "positive_class": self.class_names[self.pos] if self.pos is not None else None,
            "threshold": self.threshold,
            "threshold_rule": c.get("threshold_rule"),
            "temperature": self.temperature,
            "review_below_confidence": self.review_below,
            "preprocessing": self.prep.to_dict(),
            "training_data": c.get("training_data", "Kermany et al. 2018 pediatric chest X-rays (official train split), "
                                   "patient-grouped validation split"),
            "validation_metrics": {k: v for k, v in (c.get("val_metrics") or {}).items()
                                   if k in ("n", "auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")},
            "training": {"recipe": c.get("train_config", {}).get("recipe"), "epochs": c.get("epoch"),
                         "seed": c.get("seed"), "seconds": c.get("train_seconds"),
                         "members": len(self.members)},
            "intended_use": "Screening aid for pediatric (ages 1-5) anterior-posterior chest X-rays like the "
                            "training data; flags likely pneumonia for priority review by a clinician.",
            "limitations": [
                "Not a diagnosis: a clinician must read every image.",
                "Not validated for adults, lateral views, CT or images from other hospitals.",
                "Trained on one hospital's data (Guangzhou); performance elsewhere may be lower.",
                "Does not distinguish bacterial from viral pneumonia or detect other findings.",
            ],
            "disclaimer": DISCLAIMER,
        }
