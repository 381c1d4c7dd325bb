"""`mediflow train`: every recipe through one plain loop (training.loop), torchvision-style.

Flow: class folders -> grouped train/val split -> model -> epochs of `train_one_epoch` +
`evaluate` (best epoch kept by validation AUC; after each, the resumable training state is
written next to the output) -> calibration (temperature + bias) and threshold fitted on
validation -> one checkpoint written by rank 0. The recipes differ in what the batches are:
images through the network (`finetune`) or cached activations of its frozen stages through its
tail (`frozen`, `partial`; training.cached). `probe` is not a loop: one logistic-regression fit.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from mediflow.checkpoint import save_checkpoint
from mediflow.data.dataset import ImageFolderDataset, Samples
from mediflow.data.splits import training_split
from mediflow.decision import choose_threshold, fit_calibration, positive_index, softmax
from mediflow.errors import MediFlowError
from mediflow.metrics import compute_metrics
from mediflow.models.registry import MediFlowNet, build_model, get_spec
from mediflow.preprocessing import (
    AugmentConfig,
    PreprocessConfig,
    detect_source_jpeg_quality,
    eval_transform,
    train_transform,
)
from mediflow.training import cached as C
from mediflow.training import distributed as D
from mediflow.training.config import TrainConfig
from mediflow.training.loop import build_criterion, build_lr_scheduler, evaluate, lr_factor, train_one_epoch
from mediflow.training.probe import fit_linear_probe
from mediflow.training.resume import (
    best_from_state,
    best_to_state,
    is_training_state,
    load_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
    state_path,
)

log = logging.getLogger("mediflow.train")


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


def native_bf16(device: torch.device) -> bool:
    """Whether the hardware computes in bfloat16. Elsewhere (an AVX2-only CPU) PyTorch emulates it:
    measured ~20x slower than float32 on such a 2-core VM, so bf16 autocast must not be used there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _gather_rows(t: torch.Tensor, y: np.ndarray, idx: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """Reassemble a sharded evaluation (strided shards) into dataset order on every rank."""
    parts = D.gather_objects((idx, t.numpy(), y))
    n = sum(len(p[0]) for p in parts)
    out = np.zeros((n, t.shape[1]), dtype=np.float32)
    labels = np.zeros(n, dtype=int)
    for ids, arr, lab in parts:
        out[ids], labels[ids] = arr, lab
    return torch.from_numpy(out), labels


def check_bf16(cfg: TrainConfig, device: torch.device) -> None:
    """Turn cfg.bf16 off, with a warning, where `device` would only emulate bfloat16."""
    if cfg.bf16 and not native_bf16(device):
        log.warning("bf16 autocast asked for, but this %s has no native bfloat16: training in float32",
                    device.type.upper())
        cfg.bf16 = False  # recorded in the checkpoint's train_config as what actually ran


def preprocess_config(cfg: TrainConfig, train: Samples | None = None) -> PreprocessConfig:
    """The preprocessing a run with `cfg` trains with; given `train`, with its source JPEG quality."""
    spec = get_spec(cfg.arch)
    prep = PreprocessConfig(image_size=cfg.image_size, mean=spec.mean, std=spec.std, framing=cfg.framing,
                            intensity=cfg.intensity)
    return prep if train is None else replace(prep, source_jpeg_quality=source_jpeg_quality(cfg, train))


class Trainer:
    """One `mediflow train` run: device and processes set up, then run()."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.rank, self.world = D.init_distributed(self.device)
        self.main = self.rank == 0
        self.progress = cfg.progress and self.main
        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        check_bf16(cfg, self.device)
        self.prep = preprocess_config(cfg)
        self.aug = AugmentConfig.named(cfg.augment)

    # -- main ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        train, val = load_splits(cfg)
        # The whole configuration the run uses, recipe values filled in: a log alone says how to
        # reproduce it. Logged once the data are known good, so a bad folder stays a one-line error.
        log.info("recipe %s; configuration (recipe values where neither an option nor --config set one): %s",
                 cfg.recipe, json.dumps(cfg.to_dict(), sort_keys=True))
        class_names = train.class_names
        if val.class_names != class_names:
            raise MediFlowError(f"validation classes {val.class_names} differ from training classes {class_names}")
        log.info("train %s | val %s | classes %s | device %s x%d", train.counts(), val.counts(), class_names,
                 self.device, self.world)
        self.prep = replace(self.prep, source_jpeg_quality=source_jpeg_quality(cfg, train))
        if self.prep.source_jpeg_quality is not None:
            log.info("training images are %dpx JPEG copies at quality %d: other inputs will be encoded alike",
                     self.prep.image_size, self.prep.source_jpeg_quality)
        resume = load_training_state(cfg.resume) if cfg.resume else None
        weights = None if resume else (cfg.weights or get_spec(cfg.arch).default_weights)
        model = build_model(cfg.arch, len(class_names), weights=weights).to(self.device)
        start_epoch = 0
        if resume:
            self._check_resume(resume, class_names)
            model.load_state_dict(resume["model"] if is_training_state(resume) else resume["state_dict"])
            start_epoch = int(resume.get("epoch", 0))
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        criterion = build_criterion(cfg, train, self.device)
        val_ds = ImageFolderDataset(val, eval_transform(self.prep))
        if cfg.recipe == "probe":
            history, best = self._fit_probe(model, train, val_ds, criterion)
        else:
            history, best = self._fit(model, train, val_ds, criterion, start_epoch, resume)
        if best is None:
            raise MediFlowError(f"nothing to train: --epochs {cfg.epochs} and the --resume checkpoint is at epoch "
                                f"{start_epoch}")
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
            "state_dict": _cpu(model.state_dict()),
            "class_names": class_names,
            # The original design's checkpoint key; here it is balanced accuracy at the stored threshold, which a
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
            point = (f"at the operating point, calibrated P({class_names[pos]}) >= {threshold:.4f} "
                     f"(T {temperature:.3f})"
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

    def _check_resume(self, resume: dict[str, Any], class_names: list[str]) -> None:
        if resume.get("architecture") != self.cfg.arch or resume.get("class_names") != class_names:
            raise MediFlowError("--resume checkpoint has a different architecture or class list")
        if is_training_state(resume) and resume.get("recipe") != self.cfg.recipe:
            raise MediFlowError(f"--resume state is of the {resume.get('recipe')} recipe, not {self.cfg.recipe}")

    # -- the loop every epoch-based recipe runs ------------------------------------------------
    def _fit(self, model: MediFlowNet, train: Samples, val_ds: ImageFolderDataset, criterion: nn.Module,
             start_epoch: int, resume: dict[str, Any] | None) -> tuple[list[dict], dict | None]:
        """Epochs start_epoch+1 .. cfg.epochs of train_one_epoch + evaluate, the best epoch kept by
        _select; after each epoch rank 0 writes the training state --resume continues from."""
        cfg = self.cfg
        run = self._cached_run(model, train, val_ds) if cfg.recipe in ("frozen", "partial") else \
            self._finetune_run(model, train, val_ds)
        full = resume is not None and is_training_state(resume)
        # A shipped checkpoint carries no scheduler: the schedule picks up at its epoch.
        scheduler = build_lr_scheduler(run.optimizer, lr_factor(cfg, run.steps, constant=run.constant_lr),
                                       start_step=0 if full else start_epoch * run.steps)
        history: list[dict] = []
        best = None
        if full:
            run.optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["lr_scheduler"])
            history = list(resume["history"])
            best = best_from_state(resume["best"])
            if best["state_dict"] is None:
                best["state_dict"] = resume["model"]
            states = resume["rng"]
            if len(states) != self.world:
                log.warning("--resume state was written by %d processes, this run has %d: random draws will differ",
                            len(states), self.world)
            set_rng_state(states[self.rank % len(states)], run.generators)
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            loss = train_one_epoch(run.net, criterion, run.optimizer, run.train_batches(epoch), self.device,
                                   lr_scheduler=scheduler, bf16=run.bf16, channels_last=run.channels_last,
                                   desc=f"epoch {epoch}/{cfg.epochs}", progress=self.progress)
            logits, y = run.val_logits()
            best = self._select(best, epoch, model, logits, y, history, loss, train.class_names)
            self._save_state(epoch, model, run, scheduler, history, best, train)
        return history, best

    def _save_state(self, epoch: int, model: nn.Module, run: EpochRun, scheduler, history: list[dict], best: dict,
                    train: Samples) -> None:
        rng = D.gather_objects(rng_state(run.generators))  # every rank's own draws
        if not self.main:
            return
        save_training_state(state_path(self.cfg.out), {
            "epoch": epoch, "model": _cpu(model.state_dict()), "optimizer": run.optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(), "rng": rng, "history": history,
            # The best epoch's weights only when they are not the model's own (select "best").
            "best": {**best_to_state(best),
                     "state_dict": None if best["epoch"] == epoch else _cpu(best["state_dict"])},
            "architecture": self.cfg.arch, "class_names": train.class_names, "recipe": self.cfg.recipe,
            "train_config": self.cfg.to_dict(), "file_list_sha256": train.file_list_sha256(),
        })

    # -- what the batches are ------------------------------------------------------------------
    def _cached_run(self, model: MediFlowNet, train: Samples, val_ds: ImageFolderDataset) -> EpochRun:
        """Frozen recipe (head only, on pooled features) and partial fine-tuning (the last
        `--unfreeze N` stages on cached activations of the frozen ones). Either way the frozen
        stages cost `feature_views` passes in total, however many epochs run."""
        cfg = self.cfg
        cached = C.cache_features(cfg, model, train, val_ds, device=self.device, prep=self.prep, aug=self.aug,
                                  rank=self.rank, world=self.world, progress=self.progress)
        tail = C.cached_tail(model, cached.k, cached.pooled).to(self.device)
        g = torch.Generator().manual_seed(cfg.seed)
        steps = C.steps_per_epoch(cfg, cached)
        bf16 = C.tail_autocast(cfg, cached)

        def val_logits() -> tuple[np.ndarray, np.ndarray]:
            logits, y = evaluate(tail, C.cached_val_batches(cfg, cached), self.device, bf16=bf16)
            logits, y = _gather_rows(logits, y, cached.vidx)
            return logits.numpy(), y

        return EpochRun(net=nn.parallel.DistributedDataParallel(tail) if self.world > 1 else tail,
                        optimizer=C.cached_optimizer(cfg, model, tail, cached), steps=steps,
                        train_batches=lambda epoch: C.cached_batches(cfg, cached, epoch, steps, g),
                        val_logits=val_logits, bf16=bf16, channels_last=cfg.channels_last and not cached.pooled,
                        constant_lr=cached.pooled, generators={"batches": g})

    def _finetune_run(self, model: MediFlowNet, train: Samples, val_ds: ImageFolderDataset) -> EpochRun:
        """The whole network (or its last `--unfreeze N` stages) on augmented images."""
        cfg = self.cfg
        stages = model.stages
        n_unfrozen = len(stages) if cfg.unfreeze is None else max(0, min(cfg.unfreeze, len(stages)))
        model.freeze_stages(len(stages) - n_unfrozen)
        opt = torch.optim.AdamW(C.param_groups(cfg, model, stages[len(stages) - n_unfrozen:]), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        ds = ImageFolderDataset(train, train_transform(self.prep, self.aug))
        sampler = None
        if self.world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                            num_workers=cfg.workers, generator=g, drop_last=len(ds) > cfg.batch_size,
                            persistent_workers=cfg.workers > 0)

        def train_batches(epoch: int) -> Iterable:
            if sampler is not None:
                sampler.set_epoch(epoch)
            return loader

        def val_logits() -> tuple[np.ndarray, np.ndarray]:
            idx = D.shard(len(val_ds), self.rank, self.world)
            batches = C.loader(Subset(val_ds, idx), 64, shuffle=False, workers=cfg.workers, seed=0)
            logits, y = evaluate(model, batches, self.device, bf16=cfg.bf16, channels_last=cfg.channels_last,
                                 progress=self.progress)
            logits, y = _gather_rows(logits, y, idx)
            return logits.numpy(), y

        return EpochRun(net=nn.parallel.DistributedDataParallel(model) if self.world > 1 else model, optimizer=opt,
                        steps=len(loader), train_batches=train_batches, val_logits=val_logits, bf16=cfg.bf16,
                        channels_last=cfg.channels_last, constant_lr=False, generators={"loader": g})

    # -- probe: one fit, no epochs ---------------------------------------------------------------
    def _fit_probe(self, model: MediFlowNet, train: Samples, val_ds: ImageFolderDataset,
                   criterion: nn.CrossEntropyLoss) -> tuple[list[dict], dict]:
        """The probe recipe: one closed-form-like fit of the head (L-BFGS logistic regression) on
        every cached view at once, instead of epochs of SGD; see training/probe.py."""
        cached = C.cache_features(self.cfg, model, train, val_ds, device=self.device, prep=self.prep, aug=self.aug,
                                  rank=self.rank, world=self.world, progress=self.progress)
        idx = D.shard(len(train), self.rank, self.world)
        gathered = [_gather_rows(v.float(), cached.y_train, idx) for v in cached.views]
        y_train = gathered[0][1]
        weight, bias = fit_linear_probe([f.numpy() for f, _ in gathered], y_train, c=self.cfg.probe_c,
                                        class_weight=criterion.weight.cpu().numpy())
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(weight))
            model.head.bias.copy_(torch.from_numpy(bias))
            vl = model.head(cached.vfeats.float().to(self.device)).cpu()
            train_loss = float(np.mean([criterion(model.head(f.to(self.device)), torch.as_tensor(y_train)).item()
                                        for f, _ in gathered]))
        vlogits, vy = _gather_rows(vl, cached.vy_local, cached.vidx)
        history: list[dict] = []
        best = self._select(None, 1, model, vlogits.numpy(), vy, history, train_loss, train.class_names)
        return history, best


@dataclass
class EpochRun:
    """What one recipe hands the loop: the module that trains (`net`, DDP-wrapped on several
    processes), its optimizer, batches per epoch, each epoch's batches, the gathered validation
    logits and labels, how the steps compute, and the random generators its batches draw from."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    steps: int
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    val_logits: Callable[[], tuple[np.ndarray, np.ndarray]]
    bf16: bool
    channels_last: bool
    constant_lr: bool
    generators: dict[str, torch.Generator] = field(default_factory=dict)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run `mediflow train` with `cfg`; returns the checkpoint written to cfg.out."""
    return Trainer(cfg).run()


