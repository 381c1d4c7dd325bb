"""The Flower apps: a ClientApp per hospital (a Site) and the ServerApp that aggregates, keeps the
best round by federated validation AUC and writes the one global MediFlow checkpoint.

Message contents (docs/federated.md): server -> site: the tail's parameters and a config (recipe,
round, FedProx mu, DP clipping norm); site -> server: the tail's parameters after local epochs and a
MetricRecord (num-examples, train-loss, source-jpeg-quality) after training, or (num-examples,
val-loss, margin histograms) after validation. `Audit` records what the server received."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.differential_privacy_constants import KEY_CLIPPING_NORM
from flwr.server import Grid
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx, Strategy

from mediflow.checkpoint import save_checkpoint
from mediflow.data.dataset import Samples
from mediflow.decision import positive_index
from mediflow.federated.site import Site, backbone_fingerprint, frozen_model
from mediflow.federated.stats import dp_epsilon, fit_from_histograms, histogram_auc, margin_histograms
from mediflow.models.registry import get_spec
from mediflow.preprocessing import AugmentConfig, PreprocessConfig
from mediflow.training.cached import cached_tail, trainable_split
from mediflow.training.config import TrainConfig

log = logging.getLogger("mediflow.federated")

# The recipe fields the server decides for every site (TrainConfig names).
RECIPE_FIELDS = ("arch", "weights", "recipe", "image_size", "lr", "batch_size", "weight_decay", "label_smoothing",
                 "augment", "feature_views", "unfreeze", "backbone_lr_scale", "warmup_epochs", "bf16", "seed",
                 "source_jpeg_quality", "channels_last", "framing", "intensity", "val_fraction")


def site_config(recipe: dict[str, Any], device: str = "cpu") -> TrainConfig:
    cfg = TrainConfig(device=device, progress=False, select="last", workers=0)
    for k, v in recipe.items():
        setattr(cfg, k, v)
    return cfg


# -- client side ---------------------------------------------------------------------------------
_SITES: dict[tuple, Site] = {}  # one Site per (data, recipe) for the life of the process


def site_registry() -> dict[tuple, Site]:
    """The process's Sites. Read through this module-level function, not as a global of the closures
    below: Flower's simulation sends the ClientApp to its Ray actor pickled (cloudpickle) with every
    message, and a closure's globals travel by value (an empty copy each time, so every site would be
    prepared and its features computed again each round); a module-level function travels by name
    and finds the actor's own registry."""
    return _SITES


def make_client_app(load_site_data: Callable[[Context, TrainConfig, list[str]], tuple[Samples, Samples]],
                    cache_dir: Callable[[Context], str | None] = lambda ctx: None) -> ClientApp:
    """A ClientApp whose site data comes from `load_site_data(context, recipe_cfg, class_names)`
    (called once per process: the simulation keeps one process, a deployed SuperNode starts one per
    message, so there the feature cache on disk carries the backbone pass between rounds) and never
    enters a reply."""

    def dp_clip_when_asked(msg: Message, ctxt: Context, call_next):
        # Flower's client-side clipping for central DP, when the server's DP wrapper asks for it.
        if msg.metadata.message_type.startswith("train") and KEY_CLIPPING_NORM in msg.content["config"]:
            return fixedclipping_mod(msg, ctxt, call_next)
        return call_next(msg, ctxt)

    app = ClientApp(mods=[dp_clip_when_asked])

    def site_for(msg: Message, context: Context) -> tuple[Site, ConfigRecord]:
        conf = msg.content["config"]
        recipe = json.loads(str(conf["recipe"]))
        class_names = json.loads(str(conf["class-names"]))
        key = (json.dumps(dict(context.node_config), sort_keys=True, default=str), conf["recipe"])
        sites = site_registry()
        if key not in sites:
            cfg = site_config(recipe)
            train, val = load_site_data(context, cfg, class_names)
            log.warning("site %s: preparing (%d training, %d validation films; features cached once)",
                        context.node_config.get("partition-id", ""), len(train), len(val))
            sites[key] = Site(cfg, train, val, cache_dir=cache_dir(context))
        site = sites[key]
        if site.fingerprint != str(conf["backbone-sha"]):
            raise RuntimeError("this site's frozen backbone differs from the server's (weights or library versions)")
        return site, conf

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site, conf = site_for(msg, context)
        weights = msg.content["arrays"].to_torch_state_dict()
        state, metrics = site.fit(weights, int(conf["server-round"]), int(conf["local-epochs"]),
                                  int(conf["total-rounds"]), float(conf.get("proximal-mu", 0.0)))
        metrics["source-jpeg-quality"] = int(site.prep.source_jpeg_quality or 0)
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site, _ = site_for(msg, context)
        logits = site.validation_logits(msg.content["arrays"].to_torch_state_dict())
        y = np.asarray(site.val.labels)
        neg, pos = margin_histograms(logits, y, site.val.class_names)
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
        metrics = {"num-examples": len(y), "val-loss": loss, "hist-neg": neg, "hist-pos": pos}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


# -- server side ---------------------------------------------------------------------------------
@dataclass
class FedSettings:
    """What the server decides: the recipe (cfg), classes, rounds and aggregation."""

    cfg: TrainConfig
    class_names: list[str]
    out: str
    rounds: int = 5
    local_epochs: int = 1
    min_sites: int = 2
    strategy: str = "fedavg"  # fedavg | fedprox
    proximal_mu: float = 0.01
    dp_noise: float = 0.0  # > 0: central DP, Gaussian noise multiplier on clipped site updates
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    timeout: float = 3600.0
    describe: dict[str, Any] = field(default_factory=dict)  # e.g. the simulated partition

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "cfg"}
        d["cfg"] = self.cfg.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FedSettings:
        d = dict(d)
        d["cfg"] = TrainConfig(**d["cfg"])
        return cls(**d)


def _sum_histograms(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Evaluate replies -> one MetricRecord: histograms summed, val-loss weighted by films."""
    ms = [c["metrics"] for c in contents]
    n = sum(int(m[weight_key]) for m in ms)
    return MetricRecord({
        weight_key: n,
        "val-loss": sum(float(m["val-loss"]) * int(m[weight_key]) for m in ms) / max(n, 1),
        "hist-neg": np.sum([m["hist-neg"] for m in ms], axis=0).astype(int).tolist(),
        "hist-pos": np.sum([m["hist-pos"] for m in ms], axis=0).astype(int).tolist(),
        "sites": len(ms),
    })


def _train_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    ms = [c["metrics"] for c in contents]
    n = sum(int(m[weight_key]) for m in ms)
    q = sorted({int(m.get("source-jpeg-quality", 0)) for m in ms})
    return MetricRecord({weight_key: n, "sites": len(ms),
                         "train-loss": sum(float(m["train-loss"]) * int(m[weight_key]) for m in ms) / max(n, 1),
                         "source-jpeg-quality": q[0] if len(q) == 1 else 0})


class Audit(Strategy):
    """Delegates to `inner` and records, for every reply the server receives, the record names and
    types, array names/shapes/bytes and metric names: the evidence of what left the sites."""

    def __init__(self, inner: Strategy, rounds: int = 0):
        super().__init__()
        self.inner = inner
        self.rounds = rounds
        self.received: list[dict[str, Any]] = []
        self.sent_bytes: dict[int, int] = {}
        self.histograms: dict[int, tuple[list[int], list[int]]] = {}
        self.site_numbers: dict[int, int] = {}  # Flower node id -> 1, 2, ... in the order first sent to
        self.started: dict[tuple[int, str], float] = {}

    def _site(self, node_id: int) -> int:
        return self.site_numbers.setdefault(int(node_id), len(self.site_numbers) + 1)

    def _progress(self, rnd: int, phase: str, messages: list[Message]) -> None:
        """One line as a phase of a round starts: which sites, and why round 1 is slow."""
        sites = sorted(self._site(m.metadata.dst_node_id) for m in messages)
        self.started[(rnd, phase)] = time.perf_counter()
        slow = (" (round 1 also passes every site's films through the frozen backbone once: the slow part)"
                if rnd == 1 and phase == "train" else "")
        log.info("round %d/%d %s: sent to %d sites (%s)%s", rnd, self.rounds, phase, len(sites),
                 ", ".join(f"site {i}" for i in sites), slow)

    def _replied(self, rnd: int, phase: str, m: Message, n_replies: int, n_sent: int) -> None:
        """One line per site's reply, with what it reported."""
        site = self._site(m.metadata.src_node_id)
        took = time.perf_counter() - self.started.get((rnd, phase), time.perf_counter())
        if m.has_error():
            log.warning("round %d/%d %s: site %d failed: %s", rnd, self.rounds, phase, site,
                        str(m.error.reason)[:200])
            return
        metrics = {k: v for r in m.content.metric_records.values() for k, v in r.items()}
        what = (f"{int(metrics.get('num-examples', 0))} films, "
                f"train loss {float(metrics.get('train-loss', math.nan)):.4f}"
                if phase == "train" else
                f"{int(metrics.get('num-examples', 0))} validation films, "
                f"val loss {float(metrics.get('val-loss', math.nan)):.4f}")
        log.info("round %d/%d %s: site %d done (%d of %d) after %.0f s: %s", rnd, self.rounds, phase, site,
                 n_replies, n_sent, took, what)

    def summary(self) -> None:
        self.inner.summary()

    def _sent(self, rnd: int, messages, phase: str = "train") -> list[Message]:
        messages = list(messages)
        self._progress(rnd, phase, messages)
        self.sent_bytes[rnd] = self.sent_bytes.get(rnd, 0) + sum(
            sum(r.count_bytes() for r in m.content.array_records.values()) for m in messages)
        return messages

    def _record(self, rnd: int, phase: str, replies) -> list[Message]:
        replies = list(replies)
        for i, m in enumerate(replies, 1):
            self._replied(rnd, phase, m, i, len(replies))
            if m.has_error():
                self.received.append({"round": rnd, "phase": phase, "error": str(m.error.reason)[:300]})
                continue
            c = m.content
            self.received.append({
                "round": rnd, "phase": phase,
                "records": sorted(c.keys()),
                "record_types": {k: type(v).__name__ for k, v in c.items()},
                "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype} for r in c.array_records.values()
                           for k, a in r.items()},
                "array_bytes": sum(r.count_bytes() for r in c.array_records.values()),
                "metrics": {k: (f"list[{len(v)}]" if isinstance(v, list) else type(v).__name__)
                            for r in c.metric_records.values() for k, v in r.items()},
                "metric_bytes": sum(r.count_bytes() for r in c.metric_records.values()),
                "config_records": sorted(c.config_records.keys()),
            })
        return replies

    def configure_train(self, server_round, arrays, config, grid):
        return self._sent(server_round, self.inner.configure_train(server_round, arrays, config, grid))

    def aggregate_train(self, server_round, replies):
        return self.inner.aggregate_train(server_round, self._record(server_round, "train", replies))

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self._sent(server_round, self.inner.configure_evaluate(server_round, arrays, config, grid), "evaluate")

    def aggregate_evaluate(self, server_round, replies):
        m = self.inner.aggregate_evaluate(server_round, self._record(server_round, "evaluate", replies))
        if m is not None and "hist-neg" in m:
            # Kept here rather than in the round's MetricRecord, which Flower prints in full.
            self.histograms[server_round] = (list(m.pop("hist-neg")), list(m.pop("hist-pos")))
        began = self.started.get((server_round, "train"))
        if began is not None:
            log.info("round %d/%d done in %.0f s", server_round, self.rounds, time.perf_counter() - began)
        return m


def build_strategy(s: FedSettings) -> Strategy:
    common = dict(min_train_nodes=s.min_sites, min_evaluate_nodes=s.min_sites, min_available_nodes=s.min_sites,
                  train_metrics_aggr_fn=_train_metrics, evaluate_metrics_aggr_fn=_sum_histograms)
    strategy: Strategy = (FedProx(proximal_mu=s.proximal_mu, **common) if s.strategy == "fedprox"
                          else FedAvg(**common))
    if s.dp_noise > 0:
        strategy = DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=s.dp_noise,
                                                              clipping_norm=s.dp_clip, num_sampled_clients=s.min_sites)
    return Audit(strategy, s.rounds)


def run_federation(grid: Grid, s: FedSettings) -> dict[str, Any]:
    """The ServerApp's work: rounds of training and federated validation, then the checkpoint.
    Returns the checkpoint dict (also written to s.out, with an audit next to it)."""
    t0 = time.perf_counter()
    cfg = s.cfg
    model = frozen_model(cfg, len(s.class_names))
    k, pooled = trainable_split(cfg, model)
    model.freeze_stages(k)
    tail = cached_tail(model, k, pooled)
    recipe = json.dumps({f: getattr(cfg, f) for f in RECIPE_FIELDS})
    conf = {"recipe": recipe, "class-names": json.dumps(s.class_names), "backbone-sha": backbone_fingerprint(model, k),
            "local-epochs": s.local_epochs, "total-rounds": s.rounds}
    strategy = build_strategy(s)
    per_round: dict[int, dict[str, Any]] = {}

    def keep_round(rnd: int, arrays: ArrayRecord) -> None:
        # Called after each round's federated validation (Strategy.start): no data here, it
        # only remembers the round's global weights for choosing the best round.
        if rnd > 0:
            per_round[rnd] = {"arrays": arrays.to_torch_state_dict()}
        return None

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(tail.state_dict()), num_rounds=s.rounds,
                            timeout=s.timeout, train_config=ConfigRecord(conf), evaluate_config=ConfigRecord(conf),
                            evaluate_fn=keep_round)
    history = []
    names = s.class_names
    for rnd in sorted(per_round):
        ev = result.evaluate_metrics_clientapp.get(rnd)
        tr = result.train_metrics_clientapp.get(rnd)
        if ev is None or tr is None:
            continue
        if rnd not in strategy.histograms:
            continue
        hist = strategy.histograms[rnd]
        auc = histogram_auc(*hist, names)
        per_round[rnd].update(hist=hist, auc=auc, n_val=int(ev["num-examples"]),
                              n_train=int(tr["num-examples"]), jpeg=int(tr["source-jpeg-quality"]))
        history.append({"epoch": rnd, "round": rnd, "train_loss": round(float(tr["train-loss"]), 5), "val_auc": auc,
                        "val_loss": round(float(ev["val-loss"]), 5), "sites": int(ev["sites"])})
    done = [r for r in per_round if "auc" in per_round[r]]
    if not done:
        raise RuntimeError("no round completed with replies from the sites")
    best_round = max(done, key=lambda r: (np.nan_to_num(per_round[r]["auc"]), r))
    best = per_round[best_round]
    tail.load_state_dict(best["arrays"])
    fitted = fit_from_histograms(*best["hist"], names, min_sensitivity=cfg.min_sensitivity, calibrate=cfg.calibrate)
    spec = get_spec(cfg.arch)
    prep = PreprocessConfig(image_size=cfg.image_size, mean=spec.mean, std=spec.std, framing=cfg.framing,
                            intensity=cfg.intensity, source_jpeg_quality=best["jpeg"] or None)
    pos = positive_index(names)
    n_sites = max(h["sites"] for h in history)
    rounds_run = max(done)
    bytes_per_round = {"server_to_sites": (int(np.mean(list(strategy.sent_bytes.values())))
                                           if strategy.sent_bytes else 0),
                       "sites_to_server": int(sum(r.get("array_bytes", 0) + r.get("metric_bytes", 0)
                                                  for r in strategy.received) / max(rounds_run, 1))}
    dp = None
    if s.dp_noise > 0:
        dp = {"mechanism": "Gaussian noise on the average of site updates clipped at the site "
                           "(Flower DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod)",
              "unit": "site (one hospital's whole contribution)", "noise_multiplier": s.dp_noise,
              "clipping_norm": s.dp_clip, "rounds": rounds_run, "sample_rate": 1.0, "delta": s.dp_delta,
              "epsilon": dp_epsilon(s.dp_noise, rounds_run, s.dp_delta), "accountant": "RDP (Opacus)"}
    fed = {"sites": n_sites, "rounds": rounds_run, "local_epochs": s.local_epochs, "strategy": s.strategy,
           "proximal_mu": s.proximal_mu if s.strategy == "fedprox" else None, "best_round": best_round,
           "flower": __import__("flwr").__version__, "bytes_per_round": bytes_per_round, "differential_privacy": dp,
           "left_the_sites": "tail parameters after local epochs; num-examples, train-loss, source-jpeg-quality; "
                             "num-examples, val-loss and 640-bin margin histograms per class",
           **s.describe}
    part = f", {s.describe['partition']} partition" if "partition" in s.describe else ""
    ckpt = {
        "epoch": best_round,
        "state_dict": {kk: v.detach().cpu().contiguous() for kk, v in model.state_dict().items()},
        "class_names": names,
        "best_val_acc": fitted["val_metrics"]["balanced_accuracy"],
        "architecture": cfg.arch,
        "positive_class": names[pos] if pos is not None else None,
        "preprocessing": prep.to_dict(),
        "augmentation": AugmentConfig.named(cfg.augment).to_dict(),
        "threshold": fitted["threshold"],
        "temperature": fitted["temperature"],
        "logit_bias": fitted["logit_bias"],
        "threshold_rule": f"highest threshold on calibrated P({names[pos]}) keeping federated validation "
                          f"sensitivity >= {cfg.min_sensitivity} (from summed site margin histograms)",
        "val_metrics": fitted["val_metrics"],
        "val_split": {"n_train": best["n_train"], "n_val": best["n_val"], "grouped_by": "patient, at each site",
                      "seed": cfg.seed},
        "history": history,
        "train_config": {**cfg.to_dict(), "data": "federated", "epochs": rounds_run * s.local_epochs},
        "train_seconds": round(time.perf_counter() - t0, 1),
        "seed": cfg.seed,
        "federated": fed,
        "training_data": f"Federated: {n_sites} sites{part}, {rounds_run} rounds of {s.strategy} "
                         f"({s.local_epochs} local epoch(s) each, recipe {cfg.recipe}); patient-grouped validation "
                         f"at each site; no film left its site" + (f"; site-level DP epsilon {dp['epsilon']:.2f} at "
                                                                   f"delta {s.dp_delta:g}" if dp else ""),
        "world_size": 1,
    }
    save_checkpoint(ckpt, s.out)
    audit = {"received": strategy.received, "sent_bytes_per_round": strategy.sent_bytes, "federated": fed}
    Path(str(s.out) + ".audit.json").write_text(json.dumps(audit, indent=1, default=str))
    m = fitted["val_metrics"]
    log.info("saved %s (round %d of %d, %d sites, federated val AUC %.4f, sens %.4f, spec %.4f, thr %.4f) in %.0fs",
             s.out, best_round, rounds_run, n_sites, m["auc"], m.get("sensitivity", math.nan),
             m.get("specificity", math.nan), fitted["threshold"], ckpt["train_seconds"])
    return ckpt


def make_server_app(settings: Callable[[Context], FedSettings]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, settings(context))

    return app
