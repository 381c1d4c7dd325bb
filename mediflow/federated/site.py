"""One hospital in the federation: the `mediflow train` recipe run locally, round by round.

The site builds its model from the model registry, caches what the frozen stages compute once
(training.cached.cache_features), and each round runs local epochs of the training loop's own
`train_one_epoch` from the global weights it was sent. Only the tail's parameters (for the frozen
recipe: the head) and aggregate numbers leave it."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mediflow.data.dataset import ImageFolderDataset, Samples
from mediflow.errors import MediFlowError
from mediflow.models.registry import build_model, get_spec
from mediflow.preprocessing import AugmentConfig, eval_transform
from mediflow.training import cached as C
from mediflow.training.cached import CachedFeatures
from mediflow.training.config import TrainConfig
from mediflow.training.loop import build_criterion, build_lr_scheduler, evaluate, lr_factor, train_one_epoch
from mediflow.training.train import check_bf16, preprocess_config, resolve_device

log = logging.getLogger("mediflow.federated")


def frozen_model(cfg: TrainConfig, n_classes: int):
    """The federation's model with its frozen stages, identical at every site and the server:
    registry weights ('imagenet' by default), or, with weights 'none', a seeded random init."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.arch, n_classes, weights=cfg.weights or get_spec(cfg.arch).default_weights)


def backbone_fingerprint(model: nn.Module, k: int) -> str:
    """sha256 of the frozen stages' tensors: a site refuses to train when its frozen part differs
    from the server's (another weights file, another library version)."""
    h = hashlib.sha256()
    for name, t in nn.Sequential(*model.stages[:k]).state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureStore:
    """The site's own on-disk cache of pooled features, one file per preprocessing/model fingerprint,
    keyed by each file's sha256: a site that joins another run (or a rerun) skips the backbone pass.
    It never leaves the site."""

    def __init__(self, root: Path, fingerprint: str):
        self.path = Path(root) / f"features-{fingerprint[:16]}.pt"
        self.train: dict[str, torch.Tensor] = {}
        self.val: dict[str, torch.Tensor] = {}
        if self.path.is_file():
            d = torch.load(self.path, map_location="cpu", weights_only=True)
            self.train, self.val = d["train"], d["val"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        os.close(fd)
        torch.save({"train": self.train, "val": self.val}, tmp)
        os.replace(tmp, self.path)


def _digest(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


class Site:
    """A hospital's local trainer. cfg: the federation's recipe (sent by the server); train/val:
    this site's films (never sent anywhere); cache_dir: optional FeatureStore folder (frozen recipe)."""

    def __init__(self, cfg: TrainConfig, train: Samples, val: Samples, cache_dir: str | Path | None = None):
        if val.class_names != train.class_names:
            raise MediFlowError(f"validation classes {val.class_names} differ from "
                                f"training classes {train.class_names}")
        self.cfg, self.train, self.val = cfg, train, val
        self.device = resolve_device(cfg.device)
        self.progress = cfg.progress
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        check_bf16(cfg, self.device)
        self.prep = preprocess_config(cfg, train)
        self.aug = AugmentConfig.named(cfg.augment)
        self.model = frozen_model(cfg, len(train.class_names)).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.k, self.pooled = C.trainable_split(cfg, self.model)
        self.fingerprint = backbone_fingerprint(self.model, self.k)
        self.criterion = build_criterion(cfg, train, self.device)
        self.cached = self._features(cache_dir)
        self.tail = C.cached_tail(self.model, self.k, self.pooled).to(self.device)

    def _cache(self, train: Samples, val_ds: ImageFolderDataset) -> CachedFeatures:
        return C.cache_features(self.cfg, self.model, train, val_ds, device=self.device, prep=self.prep,
                                aug=self.aug, progress=self.progress)

    def _features(self, cache_dir) -> CachedFeatures:
        cfg = self.cfg
        val_ds = ImageFolderDataset(self.val, eval_transform(self.prep))
        if cache_dir is None or not self.pooled:
            return self._cache(self.train, val_ds)
        key = hashlib.sha256(repr((self.fingerprint, self.prep.to_dict(), self.aug.to_dict(), cfg.feature_views,
                                   cfg.seed)).encode()).hexdigest()
        store = FeatureStore(Path(cache_dir), key)
        tkeys = [_digest(p) for p in self.train.paths]
        vkeys = [_digest(p) for p in self.val.paths]
        miss_t = sorted({i for i, k in enumerate(tkeys) if k not in store.train})
        miss_v = sorted({i for i, k in enumerate(vkeys) if k not in store.val})
        self.model.freeze_stages(self.k)
        if miss_t or miss_v:
            log.info("site caches features of %d training and %d validation films", len(miss_t), len(miss_v))
            # One pass of the training's own caching over what is missing ([0] stands in for an
            # empty side, whose result is not stored).
            c = self._cache(self.train.subset(miss_t or [0]),
                            ImageFolderDataset(self.val.subset(miss_v or [0]), eval_transform(self.prep)))
            for j, i in enumerate(miss_t):
                store.train[tkeys[i]] = torch.stack([v[j] for v in c.views])
            for j, i in enumerate(miss_v):
                store.val[vkeys[i]] = c.vfeats[j]
            store.save()
        stacked = torch.stack([store.train[k] for k in tkeys])  # N x views x D
        views = [stacked[:, v].contiguous() for v in range(stacked.shape[1])]
        return CachedFeatures(views, np.asarray(self.train.labels), torch.stack([store.val[k] for k in vkeys]),
                              np.asarray(self.val.labels), list(range(len(self.val))), self.k, self.pooled)

    # -- what the federation calls --------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The exchanged parameters: the tail's state_dict (frozen recipe: head.weight, head.bias)."""
        return {k: v.detach().cpu().clone() for k, v in self.tail.state_dict().items()}

    def fit(self, weights: dict[str, torch.Tensor], server_round: int, local_epochs: int, total_rounds: int,
            proximal_mu: float = 0.0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Local epochs from the global `weights` with the training loop's own train_one_epoch;
        FedProx adds mu/2 * ||w - w_global||^2 (Li et al. 2020, arXiv:1812.06127). Returns the new
        tail state and aggregate metrics (num-examples, train-loss)."""
        self.tail.load_state_dict(weights)
        cfg, device = self.cfg, self.device
        cfg.epochs = total_rounds * local_epochs  # the learning-rate schedule spans the federation
        opt = C.cached_optimizer(cfg, self.model, self.tail, self.cached)
        steps = C.steps_per_epoch(cfg, self.cached)
        start = (server_round - 1) * local_epochs
        scheduler = build_lr_scheduler(opt, lr_factor(cfg, steps, constant=self.pooled), start_step=start * steps)
        extra = None
        if proximal_mu > 0:
            anchor = [p.detach().clone() for p in self.tail.parameters()]
            params = list(self.tail.parameters())

            def extra() -> torch.Tensor:
                return proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
        g = torch.Generator().manual_seed(cfg.seed + server_round)
        loss = float("nan")
        for epoch in range(start + 1, start + local_epochs + 1):
            loss = train_one_epoch(self.tail, self.criterion, opt, C.cached_batches(cfg, self.cached, epoch, steps, g),
                                   device, lr_scheduler=scheduler, bf16=C.tail_autocast(cfg, self.cached),
                                   channels_last=cfg.channels_last and not self.pooled, extra_loss=extra,
                                   desc=f"epoch {epoch}/{cfg.epochs}", progress=self.progress)
            log.info("site epoch %d/%d  loss %.4f", epoch, cfg.epochs, loss)
        return self.state(), {"num-examples": len(self.train), "train-loss": round(loss, 5)}

    def validation_logits(self, weights: dict[str, torch.Tensor]) -> np.ndarray:
        """Raw logits (N_val, 2) of the site's validation films under `weights`; they stay here."""
        self.tail.load_state_dict(weights)
        logits, _ = evaluate(self.tail, C.cached_val_batches(self.cfg, self.cached), self.device,
                             bf16=C.tail_autocast(self.cfg, self.cached))
        return logits.numpy()
