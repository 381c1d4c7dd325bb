"""`mediflow train`: the frozen-backbone recipe (features cached once) and full fine-tuning.

Flow: class folders -> grouped train/val split -> model -> epochs (best epoch kept by validation
AUC) -> calibration (temperature + bias) and threshold fitted on validation -> one checkpoint written by rank 0.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mediflow.checkpoint import load_checkpoint, save_checkpoint
from mediflow.data.dataset import ImageFolderDataset, Samples
from mediflow.data.splits import training_split
from mediflow.decision import choose_threshold, fit_calibration, positive_index, softmax
from mediflow.errors import MediFlowError
from mediflow.metrics import compute_metrics
from mediflow.models.registry import MediFlowNet, build_model, get_spec
from mediflow.preprocessing import (AugmentConfig, PreprocessConfig, detect_source_jpeg_quality, eval_transform,
                                   train_transform)
from mediflow.training import distributed as D
from mediflow.training.config import TrainConfig
from mediflow.training.probe import fit_linear_probe

log = logging.getLogger("mediflow.train")


def progress_bar(iterable, *, desc: str, enabled: bool):
    """tqdm that also behaves in logs: when stderr is not a terminal, update at most every 30 s."""
    import sys

    return tqdm(iterable, desc=desc, disable=not enabled, leave=False,
                mininterval=0.1 if sys.stderr.isatty() else 30)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MediFlowError("--device cuda requested but no CUDA GPU is available")
    return torch.device(name)


def load_splits(cfg: TrainConfig) -> tuple[Samples, Samples]:
    """The run's (train, validation) films (data.splits.training_split with its settings)."""
    return training_split(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, val_dir=cfg.val_dir,
                          extra_data=cfg.extra_data, max_train_samples=cfg.max_train_samples,
                          skip_bad=cfg.skip_bad)


def source_jpeg_quality(cfg: TrainConfig, train: Samples) -> int | None:
    if cfg.source_jpeg_quality == "auto":
        return detect_source_jpeg_quality(train.paths, cfg.image_size)
    return None if cfg.source_jpeg_quality == "none" else int(cfg.source_jpeg_quality)


def class_weight_tensor(cfg: TrainConfig, train: Samples) -> torch.Tensor:
    k = len(train.class_names)
    if cfg.class_weights:
        if len(cfg.class_weights) != k:
            raise MediFlowError(f"--class-weights has {len(cfg.class_weights)} values for {k} classes {train.class_names}")
        return torch.tensor(cfg.class_weights, dtype=torch.float32)
    counts = np.bincount(np.asarray(train.labels), minlength=k).astype(np.float64)
    w = counts.sum() / (k * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def _loader(ds, batch_size: int, *, shuffle: bool, workers: int, seed: int, drop_last: bool = False) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=g,
                      drop_last=drop_last, persistent_workers=workers > 0 and shuffle)


def native_bf16(device: torch.device) -> bool:
    """Whether the hardware computes in bfloat16. Elsewhere (an AVX2-only CPU) PyTorch emulates it:
    measured ~20x slower than float32 on such a 2-core VM, so bf16 autocast must not be used there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def extract(model: MediFlowNet, loader: DataLoader, device: torch.device, *, pooled: bool, bf16: bool,
            channels_last: bool, desc: str, progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Run the backbone over a loader: pooled features (pooled=True) or logits, plus labels."""
    model.eval()
    outs, labels = [], []
    for x, y in progress_bar(loader, desc=desc, enabled=progress):
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, bf16):
            f = model.pool(model.forward_features(x))
            out = f if pooled else model.forward_head(f)
        outs.append(out.float().cpu())
        labels.append(y.numpy())
    return torch.cat(outs), np.concatenate(labels)


def _gather_rows(t: torch.Tensor, y: np.ndarray, idx: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """Reassemble a sharded evaluation (strided shards) into dataset order on every rank."""
    parts = D.gather_objects((idx, t.numpy(), y))
    n = sum(len(p[0]) for p in parts)
    out = np.zeros((n, t.shape[1]), dtype=np.float32)
    labels = np.zeros(n, dtype=int)
    for ids, arr, lab in parts:
        out[ids], labels[ids] = arr, lab
    return torch.from_numpy(out), labels


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
    return CachedTail(model, k, pooled)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.rank, self.world = D.init_distributed(self.device)
        self.main = self.rank == 0
        self.progress = cfg.progress and self.main
        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        if cfg.bf16 and not native_bf16(self.device):
            log.warning("bf16 autocast asked for, but this %s has no native bfloat16: training in float32",
                        self.device.type.upper())
            cfg.bf16 = False  # recorded in the checkpoint's train_config as what actually ran
        spec = get_spec(cfg.arch)
        self.prep = PreprocessConfig(image_size=cfg.image_size, mean=spec.mean, std=spec.std, framing=cfg.framing,
                                     intensity=cfg.intensity)
        self.aug = AugmentConfig.named(cfg.augment)

    # -- data ---------------------------------------------------------------------------------
    def _val_logits(self, model: MediFlowNet, val_ds: ImageFolderDataset) -> tuple[np.ndarray, np.ndarray]:
        idx = D.shard(len(val_ds), self.rank, self.world)
        loader = _loader(Subset(val_ds, idx), 64, shuffle=False, workers=self.cfg.workers, seed=0)
        logits, y = extract(model, loader, self.device, pooled=False, bf16=self.cfg.bf16,
                            channels_last=self.cfg.channels_last, desc="validate", progress=self.progress)
        logits, y = _gather_rows(logits, y, idx)
        return logits.numpy(), y

    # -- main ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        train, val = load_splits(cfg)
        # The whole configuration the run uses, recipe values filled in: a log alone says how to
        # reproduce it. Logged once the data are known good, so a bad folder stays a one-line error.
        log.info("recipe %s; configuration (recipe values where no option was given): %s", cfg.recipe,
                 json.dumps(cfg.to_dict(), sort_keys=True))
        class_names = train.class_names
        if val.class_names != class_names:
            raise MediFlowError(f"validation classes {val.class_names} differ from training classes {class_names}")
        log.info("train %s | val %s | classes %s | device %s x%d", train.counts(), val.counts(), class_names,
                 self.device, self.world)
        self.prep = replace(self.prep, source_jpeg_quality=source_jpeg_quality(cfg, train))
        if self.prep.source_jpeg_quality is not None:
            log.info("training images are %dpx JPEG copies at quality %d: other inputs will be encoded alike",
                     self.prep.image_size, self.prep.source_jpeg_quality)
        resume = load_checkpoint(cfg.resume) if cfg.resume else None
        weights = None if resume else (cfg.weights or get_spec(cfg.arch).default_weights)
        model = build_model(cfg.arch, len(class_names), weights=weights).to(self.device)
        start_epoch = 0
        if resume:
            if resume.get("architecture") != cfg.arch or resume.get("class_names") != class_names:
                raise MediFlowError("--resume checkpoint has a different architecture or class list")
            model.load_state_dict(resume["state_dict"])
            start_epoch = int(resume.get("epoch", 0))
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        criterion = nn.CrossEntropyLoss(weight=class_weight_tensor(cfg, train).to(self.device),
                                        label_smoothing=cfg.label_smoothing)
        val_ds = ImageFolderDataset(val, eval_transform(self.prep))
        if cfg.recipe in ("frozen", "partial", "probe"):
            history, best = self._train_cached(model, train, val_ds, criterion, start_epoch, resume)
        else:
            history, best = self._train_finetune(model, train, val_ds, criterion, start_epoch, resume)
        model.load_state_dict(best["state_dict"])
        logits, y = best["val_logits"], best["val_labels"]
        pos = positive_index(class_names)
        temperature, logit_bias = fit_calibration(logits, y) if cfg.calibrate else (1.0, [0.0] * len(class_names))
        probs = softmax(logits, temperature, logit_bias)
        threshold = choose_threshold(probs[:, pos], y == pos, cfg.min_sensitivity) if pos is not None else None
        metrics = compute_metrics(y, probs, class_names, threshold=threshold)
        wall = time.perf_counter() - t0
        ckpt = {
            "epoch": best["epoch"],
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "class_names": class_names,
            # The design's key; here it is balanced accuracy at the stored threshold, which a
            # 74%-PNEUMONIA data set cannot inflate the way plain accuracy can.
            "best_val_acc": metrics["balanced_accuracy"],
            "architecture": cfg.arch,
            "positive_class": class_names[pos] if pos is not None else None,
            "preprocessing": self.prep.to_dict(),
            "augmentation": self.aug.to_dict(),
            "threshold": threshold,
            "temperature": temperature,
            "logit_bias": logit_bias,
            "threshold_rule": f"highest threshold on calibrated P({class_names[pos] if pos is not None else '-'}) "
                              f"keeping validation sensitivity >= {cfg.min_sensitivity}",
            "val_metrics": metrics,
            "val_split": {"n_train": len(train), "n_val": len(val), "val_fraction": cfg.val_fraction,
                          "grouped_by": "patient + identical bytes", "seed": cfg.seed},
            "history": history,
            "train_config": cfg.to_dict(),
            "train_seconds": round(wall, 1),
            "seed": cfg.seed,
            "file_list_sha256": train.file_list_sha256(),
            "val_file_list_sha256": val.file_list_sha256(),
            "world_size": self.world,
        }
        if self.main:
            save_checkpoint(ckpt, cfg.out)
            # The same metric names as the epoch lines, each naming the operating point it is measured at.
            point = (f"at the operating point, calibrated P({class_names[pos]}) >= {threshold:.4f} (T {temperature:.3f})"
                     if pos is not None and threshold is not None else "at the highest score")
            log.info("saved %s: epoch %d  val AUC %.4f  val balanced acc %.4f  val sensitivity %.4f  val specificity "
                     "%.4f (%s) in %.0fs", cfg.out, best["epoch"], metrics["auc"], metrics["balanced_accuracy"],
                     metrics.get("sensitivity", float("nan")), metrics.get("specificity", float("nan")), point, wall)
        D.barrier()
        D.shutdown()
        return ckpt

    def _select(self, best: dict | None, epoch: int, model: nn.Module, logits: np.ndarray, y: np.ndarray,
                history: list[dict], loss: float, class_names: list[str]) -> dict:
        probs = softmax(logits)
        m = compute_metrics(y, probs, class_names, threshold=0.5 if len(class_names) == 2 else None)
        # AUC is threshold-free and blind to class balance; tie-break on balanced accuracy.
        score = (np.nan_to_num(m["auc"]), np.nan_to_num(m["balanced_accuracy"]))
        history.append({"epoch": epoch, "train_loss": round(loss, 5), "val_auc": m["auc"],
                        "val_balanced_accuracy": m["balanced_accuracy"]})
        if self.main:
            log.info("epoch %d/%d  loss %.4f  val AUC %.4f  val balanced acc %.4f (at uncalibrated P = 0.5; the saved "
                     "model's is at its fitted operating point)", epoch, self.cfg.epochs, loss, m["auc"],
                     m["balanced_accuracy"])
        if best is None or self.cfg.select == "last" or score > best["score"]:
            best = {"score": score, "epoch": epoch, "val_logits": logits, "val_labels": y,
                    "state_dict": copy.deepcopy(model.state_dict())}
        return best

    # -- cached: the frozen part of the network runs once per view, not once per epoch ----------
    def _train_cached(self, model, train, val_ds, criterion, start_epoch, resume):
        """Frozen recipe (n_trainable = 0: pooled features, head only) and partial fine-tuning
        (`--unfreeze N` with the `partial` recipe: the last N stages train on cached activations of
        the frozen stages). Either way the frozen stages cost `feature_views` passes in total,
        however many epochs run."""
        cached = self.cache_features(model, train, val_ds)
        if self.cfg.recipe == "probe":
            idx = D.shard(len(train), self.rank, self.world)
            return self._fit_probe(model, cached.views, cached.y_train, idx, cached.vfeats, cached.vy_local, cached.vidx,
                                   criterion, train.class_names)
        tail = cached_tail(model, cached.k, cached.pooled).to(self.device)
        opt = self.cached_optimizer(model, tail, cached, resume)
        return self.fit_cached(model, tail, opt, cached, criterion, train.class_names, start_epoch, self.cfg.epochs)

    def trainable_split(self, model: MediFlowNet) -> tuple[int, bool]:
        """(k, pooled) of the cached recipes: the first k backbone stages are frozen; pooled is True
        when nothing but the head trains (the `frozen` recipe)."""
        n_trainable = 0 if self.cfg.recipe in ("frozen", "probe") else max(1, min(self.cfg.unfreeze or 3, len(model.stages)))
        return len(model.stages) - n_trainable, n_trainable == 0

    def cache_features(self, model: MediFlowNet, train: Samples, val_ds: ImageFolderDataset) -> CachedFeatures:
        """Run the frozen stages once per augmented view of `train` and once over `val_ds`
        (this rank's shard of each). Freezes the model's first k stages as a side effect."""
        cfg = self.cfg
        k, pooled = self.trainable_split(model)
        model.freeze_stages(k)
        prefix = nn.Sequential(*model.stages[:k])
        # Spatial activations are large: keep them in bfloat16 (pooled features are tiny: float32).
        store_dtype = torch.float32 if pooled else torch.bfloat16

        @torch.no_grad()
        def run_prefix(x: torch.Tensor) -> torch.Tensor:
            f = prefix(x)
            return (model.pool(f) if pooled else f).to(store_dtype)

        def cache(ds, idx, desc):
            loader = _loader(Subset(ds, idx), 64, shuffle=False, workers=cfg.workers, seed=cfg.seed)
            outs, labels = [], []
            prefix.eval()
            for x, y in progress_bar(loader, desc=desc, enabled=self.progress):
                x = x.to(self.device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(self.device, cfg.bf16):
                    outs.append(run_prefix(x).cpu())
                labels.append(y.numpy())
            return torch.cat(outs), np.concatenate(labels)

        idx = D.shard(len(train), self.rank, self.world)
        tf = train_transform(self.prep, self.aug)
        views = []
        for v in range(max(1, cfg.feature_views)):
            torch.manual_seed(cfg.seed * 1000 + v * 17 + self.rank)
            feats, y_train = cache(ImageFolderDataset(train, tf), idx, f"cache view {v + 1}/{cfg.feature_views}")
            views.append(feats)
        vidx = D.shard(len(val_ds), self.rank, self.world)
        vfeats, vy_local = cache(val_ds, vidx, "cache val")
        return CachedFeatures(views, y_train, vfeats, vy_local, vidx, k, pooled)

    def cached_optimizer(self, model: MediFlowNet, tail: nn.Module, cached: CachedFeatures,
                         resume: dict | None = None) -> torch.optim.Optimizer:
        """The cached recipes' optimizer over the tail: Adam on the head (frozen), AdamW with
        discriminative learning rates (partial)."""
        cfg = self.cfg
        if cached.pooled:
            opt = torch.optim.Adam(tail.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(self._param_groups(model, list(model.stages[cached.k:])), lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
        if resume and "optimizer" in resume:
            with contextlib.suppress(ValueError):
                opt.load_state_dict(resume["optimizer"])
        return opt

    def fit_cached(self, model: MediFlowNet, tail: nn.Module, opt: torch.optim.Optimizer, cached: CachedFeatures,
                   criterion: nn.Module, class_names: list[str], start_epoch: int, end_epoch: int, *,
                   seed: int | None = None, extra_loss=None) -> tuple[list[dict], dict]:
        """Epochs start_epoch+1 .. end_epoch of the cached recipes on `cached`, validating after
        each; returns (history, best) as `_select` keeps it. The learning-rate schedule spans
        cfg.epochs. `seed` (default cfg.seed) seeds the batch order; `extra_loss()`, when given, is
        added to every batch's loss (FedProx's proximal term, for one)."""
        cfg = self.cfg
        pooled = cached.pooled
        views, vfeats, vy_local, vidx = cached.views, cached.vfeats, cached.vy_local, cached.vidx

        def as_input(x: torch.Tensor) -> torch.Tensor:
            # Cached activations are stored in bfloat16; without autocast the tail computes in float32.
            return x if cfg.bf16 and not pooled else x.float()

        trainable = nn.parallel.DistributedDataParallel(tail) if self.world > 1 else tail
        y_t = torch.as_tensor(cached.y_train, dtype=torch.long)
        history: list[dict] = []
        best = None
        g = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        # Every rank takes the same number of steps, or DDP's all-reduce would wait forever.
        n_local = len(y_t)
        steps = max(D.gather_objects(math.ceil(n_local / cfg.batch_size)))
        schedule = self._schedule(steps, pooled)
        step = start_epoch * steps
        for epoch in range(start_epoch + 1, end_epoch + 1):
            feats = views[(epoch - 1) % len(views)]
            tail.train()
            perm = torch.randperm(n_local, generator=g)
            total, count = 0.0, 0
            bar = progress_bar(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", enabled=self.progress)
            for s in bar:
                for gr in opt.param_groups:
                    gr["lr"] = gr.get("base_lr", cfg.lr) * schedule(step)
                b = perm[(s * cfg.batch_size) % n_local:][: cfg.batch_size]
                x, yb = feats[b].to(self.device), y_t[b].to(self.device)
                if cfg.channels_last and not pooled:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(self.device, cfg.bf16 and not pooled):
                    logits = trainable(as_input(x))
                loss = criterion(logits.float(), yb)
                if extra_loss is not None:
                    loss = loss + extra_loss()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                total += loss.item() * len(b)
                count += len(b)
                bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            tail.eval()
            with torch.no_grad(), _autocast(self.device, cfg.bf16 and not pooled):
                vl = torch.cat([tail(as_input(vfeats[i:i + 128].to(self.device))).float().cpu()
                                for i in range(0, len(vfeats), 128)])
            vlogits, vy = _gather_rows(vl, vy_local, vidx)
            best = self._select(best, epoch, model, vlogits.numpy(), vy, history, total / max(count, 1),
                                class_names)
        return history, best

    def _fit_probe(self, model, views, y_local, idx, vfeats, vy_local, vidx, criterion, class_names):
        """The probe recipe: one closed-form-like fit of the head (L-BFGS logistic regression) on
        every cached view at once, instead of epochs of SGD; see training/probe.py."""
        gathered = [_gather_rows(v.float(), y_local, idx) for v in views]
        y_train = gathered[0][1]
        weight, bias = fit_linear_probe([f.numpy() for f, _ in gathered], y_train, c=self.cfg.probe_c,
                                        class_weight=criterion.weight.cpu().numpy())
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(weight))
            model.head.bias.copy_(torch.from_numpy(bias))
            vl = model.head(vfeats.float().to(self.device)).cpu()
            train_loss = float(np.mean([criterion(model.head(f.to(self.device)), torch.as_tensor(y_train)).item()
                                        for f, _ in gathered]))
        vlogits, vy = _gather_rows(vl, vy_local, vidx)
        history: list[dict] = []
        best = self._select(None, 1, model, vlogits.numpy(), vy, history, train_loss, class_names)
        return history, best

    def _param_groups(self, model: MediFlowNet, trainable_stages: list[nn.Module]) -> list[dict]:
        """Discriminative learning rates: the head at lr, later stages closer to it than early ones."""
        cfg = self.cfg
        groups = [{"params": list(model.head.parameters()), "lr": cfg.lr}]
        for i, st in enumerate(trainable_stages):
            depth = (i + 1) / max(1, len(trainable_stages))
            scale = cfg.backbone_lr_scale ** (1.5 - depth) if cfg.backbone_lr_scale > 0 else 0
            params = [p for p in st.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": cfg.lr * min(1.0, scale)})
        for gr in groups:
            gr["base_lr"] = gr["lr"]
        return groups

    def _schedule(self, steps_per_epoch: int, constant: bool):
        """Linear warm-up then cosine decay to zero; the design's frozen recipe keeps Adam's lr constant."""
        cfg = self.cfg
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

    # -- finetune: the whole network (or its last N stages) -----------------------------------
    def _train_finetune(self, model, train, val_ds, criterion, start_epoch, resume):
        cfg = self.cfg
        stages = model.stages
        n_unfrozen = len(stages) if cfg.unfreeze is None else max(0, min(cfg.unfreeze, len(stages)))
        model.freeze_stages(len(stages) - n_unfrozen)
        trainable_stages = stages[len(stages) - n_unfrozen:]
        groups = self._param_groups(model, trainable_stages)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        tf = train_transform(self.prep, self.aug)
        ds = ImageFolderDataset(train, tf)
        sampler = None
        if self.world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                            num_workers=cfg.workers, generator=g, drop_last=len(ds) > cfg.batch_size,
                            persistent_workers=cfg.workers > 0)
        net: nn.Module = model
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(model)
        steps_per_epoch = len(loader)
        lr_factor = self._schedule(steps_per_epoch, constant=False)

        if resume and "optimizer" in resume:
            with contextlib.suppress(ValueError):
                opt.load_state_dict(resume["optimizer"])
        history: list[dict] = []
        best = None
        step = start_epoch * steps_per_epoch
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            if sampler is not None:
                sampler.set_epoch(epoch)
            model.train()
            total, count = 0.0, 0
            bar = progress_bar(loader, desc=f"epoch {epoch}/{cfg.epochs}", enabled=self.progress)
            for x, y in bar:
                for gr in opt.param_groups:
                    gr["lr"] = gr["base_lr"] * lr_factor(step)
                x, y = x.to(self.device), y.to(self.device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(self.device, cfg.bf16):
                    logits = net(x)
                loss = criterion(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                total += loss.item() * len(y)
                count += len(y)
                bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
            vlogits, vy = self._val_logits(model, val_ds)
            best = self._select(best, epoch, model, vlogits, vy, history, total / max(count, 1), train.class_names)
        return history, best


def train(cfg: TrainConfig) -> dict[str, Any]:
    return Trainer(cfg).run()


