"""The cached recipes' pieces: the frozen stages run once per augmented view, not once per epoch,
and what trains (the network's tail) learns from their cached activations.

`frozen`/`probe`: pooled features, head only; `partial`: the last `unfreeze` stages on cached
spatial activations. The batches these functions make are consumed by training.loop like any
others, by `mediflow train` and by a federated site alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from mediflow.data.dataset import ImageFolderDataset, Samples
from mediflow.models.registry import MediFlowNet
from mediflow.preprocessing import AugmentConfig, PreprocessConfig, train_transform
from mediflow.training import distributed as D
from mediflow.training.config import TrainConfig
from mediflow.training.loop import autocast, progress_bar


@dataclass
class CachedFeatures:
    """What the frozen stages produced, once: `views` (feature_views tensors, N x C [x H x W]) of
    this rank's training shard with labels `y_train` (N,), validation features `vfeats` with labels
    `vy_local` at dataset rows `vidx`; the first `k` stages are frozen; `pooled`: head-only."""

    views: list[torch.Tensor]
    y_train: np.ndarray
    vfeats: torch.Tensor
    vy_local: np.ndarray
    vidx: list[int]
    k: int
    pooled: bool


class CachedTail(nn.Module):
    """The trainable rest of the network, from cached activations to logits: stages k.. of `model`
    (none when pooled), then its dropout and head. Shares those modules with `model`, so training
    the tail trains the model."""

    def __init__(self, model: MediFlowNet, k: int, pooled: bool):
        super().__init__()
        self.stages = nn.ModuleList(list(model.stages[k:]) if not pooled else [])
        self.dropout, self.head = model.dropout, model.head
        self._pool = model.pool
        self.pooled = pooled

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if not self.pooled:
            for st in self.stages:
                f = st(f)
            f = self._pool(f)
        return self.head(self.dropout(f))


def cached_tail(model: MediFlowNet, k: int, pooled: bool) -> CachedTail:
    """The CachedTail of `model` after its first `k` stages."""
    return CachedTail(model, k, pooled)


def trainable_split(cfg: TrainConfig, model: MediFlowNet) -> tuple[int, bool]:
    """(k, pooled) of the cached recipes: the first k backbone stages are frozen; pooled is True
    when nothing but the head trains (the `frozen` and `probe` recipes)."""
    n_trainable = 0 if cfg.recipe in ("frozen", "probe") else max(1, min(cfg.unfreeze or 3, len(model.stages)))
    return len(model.stages) - n_trainable, n_trainable == 0


def loader(ds, batch_size: int, *, shuffle: bool, workers: int, seed: int, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and worker seeds follow `seed`."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=g,
                      drop_last=drop_last, persistent_workers=workers > 0 and shuffle)


def cache_features(cfg: TrainConfig, model: MediFlowNet, train: Samples, val_ds: ImageFolderDataset, *,
                   device: torch.device, prep: PreprocessConfig, aug: AugmentConfig, rank: int = 0, world: int = 1,
                   progress: bool = False) -> CachedFeatures:
    """Run the frozen stages once per augmented view of `train` and once over `val_ds` (this
    rank's shard of each). Freezes the model's first k stages as a side effect."""
    k, pooled = trainable_split(cfg, model)
    model.freeze_stages(k)
    prefix = nn.Sequential(*model.stages[:k])
    # Spatial activations are large: keep them in bfloat16 (pooled features are tiny: float32).
    store_dtype = torch.float32 if pooled else torch.bfloat16

    @torch.no_grad()
    def run_prefix(x: torch.Tensor) -> torch.Tensor:
        f = prefix(x)
        return (model.pool(f) if pooled else f).to(store_dtype)

    def cache(ds, idx, desc):
        batches = loader(Subset(ds, idx), 64, shuffle=False, workers=cfg.workers, seed=cfg.seed)
        outs, labels = [], []
        prefix.eval()
        for x, y in progress_bar(batches, desc=desc, enabled=progress):
            x = x.to(device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.bf16):
                outs.append(run_prefix(x).cpu())
            labels.append(y.numpy())
        return torch.cat(outs), np.concatenate(labels)

    idx = D.shard(len(train), rank, world)
    tf = train_transform(prep, aug)
    views = []
    for v in range(max(1, cfg.feature_views)):
        torch.manual_seed(cfg.seed * 1000 + v * 17 + rank)
        feats, y_train = cache(ImageFolderDataset(train, tf), idx, f"cache view {v + 1}/{cfg.feature_views}")
        views.append(feats)
    vidx = D.shard(len(val_ds), rank, world)
    vfeats, vy_local = cache(val_ds, vidx, "cache val")
    return CachedFeatures(views, y_train, vfeats, vy_local, vidx, k, pooled)


def param_groups(cfg: TrainConfig, model: MediFlowNet, trainable_stages: list[nn.Module]) -> list[dict]:
    """Discriminative learning rates: the head at lr, later stages closer to it than early ones."""
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr}]
    for i, st in enumerate(trainable_stages):
        depth = (i + 1) / max(1, len(trainable_stages))
        scale = cfg.backbone_lr_scale ** (1.5 - depth) if cfg.backbone_lr_scale > 0 else 0
        params = [p for p in st.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": cfg.lr * min(1.0, scale)})
    return groups


def cached_optimizer(cfg: TrainConfig, model: MediFlowNet, tail: nn.Module,
                     cached: CachedFeatures) -> torch.optim.Optimizer:
    """The cached recipes' optimizer over the tail: Adam on the head (frozen), AdamW with
    discriminative learning rates (partial)."""
    if cached.pooled:
        return torch.optim.Adam(tail.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups(cfg, model, list(model.stages[cached.k:])), lr=cfg.lr,
                             weight_decay=cfg.weight_decay)


def tail_autocast(cfg: TrainConfig, cached: CachedFeatures) -> bool:
    """Whether the tail computes under bf16 autocast: never for pooled features (head only)."""
    return cfg.bf16 and not cached.pooled


def _as_input(x: torch.Tensor, bf16: bool) -> torch.Tensor:
    # Cached activations are stored in bfloat16; without autocast the tail computes in float32.
    return x if bf16 else x.float()


def steps_per_epoch(cfg: TrainConfig, cached: CachedFeatures) -> int:
    """Batches per epoch: the same on every rank, or DDP's all-reduce would wait forever."""
    return max(D.gather_objects(math.ceil(len(cached.y_train) / cfg.batch_size)))


def cached_batches(cfg: TrainConfig, cached: CachedFeatures, epoch: int, steps: int,
                   generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch `epoch`'s (activations, labels) batches: the epoch's cached view (views take turns),
    in an order drawn from `generator`; `steps` batches, wrapping around a shorter shard."""
    feats = cached.views[(epoch - 1) % len(cached.views)]
    y = torch.as_tensor(cached.y_train, dtype=torch.long)
    n = len(y)
    perm = torch.randperm(n, generator=generator)
    bf16 = tail_autocast(cfg, cached)
    for s in range(steps):
        b = perm[(s * cfg.batch_size) % n:][: cfg.batch_size]
        yield _as_input(feats[b], bf16), y[b]


def cached_val_batches(cfg: TrainConfig, cached: CachedFeatures,
                       size: int = 128) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """This rank's cached validation activations in dataset order, `size` at a time."""
    bf16 = tail_autocast(cfg, cached)
    for i in range(0, len(cached.vfeats), size):
        yield _as_input(cached.vfeats[i:i + size], bf16), cached.vy_local[i:i + size]
