"""The training loop every recipe and the federated site share: one `train_one_epoch`, one
`evaluate`, the one place the loss criterion is built, and the learning-rate schedule.

Shaped like torchvision's references/classification/train.py: what differs between recipes is
what the batches are (images through the whole network, or cached activations through the
network's tail), not the loop that consumes them.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mediflow.data.dataset import Samples
from mediflow.errors import MediFlowError
from mediflow.training.config import TrainConfig

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def progress_bar(iterable, *, desc: str, enabled: bool):
    """tqdm that also behaves in logs: when stderr is not a terminal, update at most every 30 s."""
    return tqdm(iterable, desc=desc, disable=not enabled, leave=False,
                mininterval=0.1 if sys.stderr.isatty() else 30)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on `device` when enabled, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def class_weight_tensor(cfg: TrainConfig, train: Samples) -> torch.Tensor:
    """cfg.class_weights, or inverse class frequency of `train` when none are given."""
    k = len(train.class_names)
    if cfg.class_weights:
        if len(cfg.class_weights) != k:
            raise MediFlowError(f"--class-weights has {len(cfg.class_weights)} values for {k} classes "
                                f"{train.class_names}")
        return torch.tensor(cfg.class_weights, dtype=torch.float32)
    counts = np.bincount(np.asarray(train.labels), minlength=k).astype(np.float64)
    w = counts.sum() / (k * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def build_criterion(cfg: TrainConfig, train: Samples, device: torch.device) -> nn.CrossEntropyLoss:
    """Weighted cross-entropy (class weights as class_weight_tensor) with cfg's label smoothing."""
    return nn.CrossEntropyLoss(weight=class_weight_tensor(cfg, train).to(device), label_smoothing=cfg.label_smoothing)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, *, constant: bool) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimizer step: linear warm-up over cfg.warmup_epochs,
    then cosine decay to zero at cfg.epochs; `constant` keeps it at 1 (the frozen recipe's Adam)."""
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if constant:
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, factor: Callable[[int], float], *,
                       start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler applying `factor` to each group's initial lr; `start_step` offsets it
    (a federated round that starts part-way through the schedule with a fresh optimizer)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step + start_step))


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                    device: torch.device, *, lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    bf16: bool = False, channels_last: bool = False,
                    extra_loss: Callable[[], torch.Tensor] | None = None, desc: str = "train",
                    progress: bool = False) -> float:
    """One pass over `batches` of (input, label), one optimizer step (and scheduler step) per
    batch; `extra_loss()`, when given, is added to every batch's loss (FedProx's proximal term).
    Returns the epoch's mean loss per example."""
    model.train()
    total, count = 0.0, 0
    bar = progress_bar(batches, desc=desc, enabled=progress)
    for x, y in bar:
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            logits = model(x)
        loss = criterion(logits.float(), y)
        if extra_loss is not None:
            loss = loss + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device, *, bf16: bool = False,
             channels_last: bool = False, desc: str = "validate",
             progress: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """The model's float32 logits (on the CPU, in batch order) over `batches`, and their labels."""
    model.eval()
    outs, labels = [], []
    for x, y in progress_bar(batches, desc=desc, enabled=progress):
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            outs.append(model(x).float().cpu())
        labels.append(np.asarray(y))
    return torch.cat(outs), np.concatenate(labels)
