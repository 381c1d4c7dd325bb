"""The inference graph: one module that every runtime runs (eager in torch for training-side
scoring and the torch backend, exported to ONNX for serving).

Outputs, for a preprocessed batch `image` (N, 3, S, S):
- `logits` (N, K): a single model's raw logits (the predictor applies the checkpoint's
  temperature and bias); for an ensemble, log of the members' averaged softmax(logits / T_i + b_i), so that
  softmax(logits) is the ensemble's probability before its own site calibration (none until refitted).
- `features` (N, C, h, w): the last feature map (members' maps concatenated for an ensemble).
- `cam` (N, K, h, w): class activation maps, the feature map weighted by the linear head's weights.
  With global average pooling followed by a linear head, this is what Grad-CAM on the last layer
  computes, so the heatmap costs one tiny matrix product instead of a backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mediflow.checkpoint import checkpoint_members
from mediflow.errors import CheckpointError
from mediflow.models.registry import MediFlowNet, build_model
from mediflow.preprocessing import PreprocessConfig

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "features", "cam")


def load_member(ckpt: dict[str, Any]) -> MediFlowNet:
    try:
        model = build_model(ckpt["architecture"], len(ckpt["class_names"]), weights=None)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not match its architecture "
                              f"({str(exc).splitlines()[0][:200]})") from None
    return model.eval()


def class_activation_maps(model: MediFlowNet, fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature map -> (N, K, h, w): sum over channels of head weight x activation."""
    return torch.einsum("kc,nchw->nkhw", model.head.weight, fmap)


class InferenceGraph(nn.Module):
    def __init__(self, members: list[MediFlowNet], temperatures: list[float], biases: list[list[float]]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("inv_temperatures", torch.tensor([1.0 / t for t in temperatures]), persistent=False)
        # Each member's calibration bias (bias-corrected temperature scaling, see calibration.py).
        self.register_buffer("biases", torch.tensor(biases, dtype=torch.float32), persistent=False)
        self.eval()

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.is_ensemble:
            model = self.members[0]
            logits, fmap = model.forward_with_features(image)
            return logits, fmap, class_activation_maps(model, fmap)
        probs, fmaps, cams = [], [], []
        for i, model in enumerate(self.members):
            logits, fmap = model.forward_with_features(image)
            probs.append(torch.softmax(logits * self.inv_temperatures[i] + self.biases[i], dim=1))
            fmaps.append(fmap)
            # Each member's map in its calibrated logit units, so members weigh as they do in the average.
            cams.append(class_activation_maps(model, fmap) * self.inv_temperatures[i])
        mean_probs = torch.stack(probs).mean(dim=0)
        return torch.log(mean_probs.clamp_min(1e-12)), torch.cat(fmaps, dim=1), torch.stack(cams).mean(dim=0)

    def target_layers(self) -> list[nn.Module]:
        """The modules whose output is the last feature map (for pytorch-grad-cam)."""
        return [m.backbone for m in self.members]


def build_graph(ckpt: dict[str, Any]) -> InferenceGraph:
    members = checkpoint_members(ckpt)
    class_names = list(ckpt["class_names"])
    if any(list(m["class_names"]) != class_names for m in members):
        raise CheckpointError("ensemble members disagree on class names")
    preps = {PreprocessConfig.from_dict(m.get("preprocessing") or {}) for m in members}
    if len(preps) > 1:
        raise CheckpointError("ensemble members preprocess differently; one graph needs one preprocessing")
    k = len(class_names)
    if len(members) > 1:
        temps = [float(m.get("temperature") or 1.0) for m in members]
        biases = [list(m.get("logit_bias") or [0.0] * k) for m in members]
    else:  # a single model's graph returns raw logits; the predictor calibrates them
        temps, biases = [1.0], [[0.0] * k]
    return InferenceGraph([load_member(m) for m in members], temps, biases)


def load_graph(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> InferenceGraph:
    """`build_graph(ckpt)` on `device`, channels-last (the layout eager inference runs fastest in)."""
    return build_graph(ckpt).to(torch.device(device)).to(memory_format=torch.channels_last)


def graph_input(batch: Any, device: str | torch.device = "cpu") -> torch.Tensor:
    """A float32 batch (N, 3, S, S) as the graph's input tensor on `device`, channels-last."""
    x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
    return x.to(torch.device(device)).contiguous(memory_format=torch.channels_last)


def run_graph(graph: InferenceGraph, batch: Any, outputs: Sequence[str] = ("logits",),
              device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """The named outputs (OUTPUT_NAMES) of `graph` on a float32 batch, as float32 numpy arrays."""
    with torch.inference_mode():
        values = dict(zip(OUTPUT_NAMES, graph(graph_input(batch, device))))
    return {k: values[k].float().cpu().numpy() for k in outputs}
