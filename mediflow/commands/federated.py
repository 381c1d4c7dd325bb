"""`mediflow federated simulate`: federated training on Flower (docs/federated.md). The deployed
server/client pair (SuperLink/SuperNode) is not built yet: see docs/federated.md."""

from __future__ import annotations

import argparse

from mediflow.commands.train import _ArchitectureNames
from mediflow.errors import MediFlowError

PARTITION_CHOICES = ["patient", "label-skew", "framing"]


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="fed.pth", help="global checkpoint the server writes (default: fed.pth)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    p.add_argument("--local-epochs", type=int, default=1, help="local epochs per round (default 1)")
    p.add_argument("--arch", default="efficientnet_lite0", choices=_ArchitectureNames(), metavar="ARCH")
    p.add_argument("--weights", default=None, choices=["imagenet", "none"],
                   help="frozen-stage weights every site builds alike (default: the registry's, imagenet)")
    p.add_argument("--recipe", default="frozen", choices=["frozen", "partial"],
                   help="frozen (default): sites exchange the head; partial: the last --unfreeze stages too")
    p.add_argument("--unfreeze", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--feature-views", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--min-sensitivity", type=float)
    p.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox"])
    p.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx's mu (default 0.01)")
    p.add_argument("--dp-noise", type=float, default=0.0,
                   help="> 0: central DP with client-side clipping, this Gaussian noise multiplier")
    p.add_argument("--dp-clip", type=float, default=1.0, help="DP clipping norm of a site's update (default 1)")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="DP delta for the recorded epsilon")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("federated", help="train across sites with Flower without moving images",
                       description="Federated training: a simulation on one machine, or a real server and clients.")
    fs = p.add_subparsers(dest="federated_command", metavar="{simulate}", required=True)

    s = fs.add_parser("simulate", help="N simulated hospitals on this machine (Flower's simulation engine)")
    s.add_argument("--data", required=True, help="dataset root (train/ or class folders), split among the sites")
    s.add_argument("--sites", type=int, required=True)
    s.add_argument("--partition", default="patient", choices=PARTITION_CHOICES,
                   help="patient: IID by patient; label-skew: Dirichlet class balance; framing: by film framing")
    s.add_argument("--alpha", type=float, default=0.5, help="label-skew Dirichlet alpha (default 0.5)")
    s.add_argument("--cache-dir", help="sites' feature cache folder (frozen recipe); reruns skip the backbone pass")
    _recipe_args(s)

    return p


def _settings(args: argparse.Namespace, class_names: list[str], describe: dict, min_sites: int):
    from mediflow.federated.apps import FedSettings
    from mediflow.training.config import TrainConfig, apply_recipe

    cfg = TrainConfig(recipe=args.recipe, progress=False)
    explicit = set()
    for f in ("arch", "weights", "unfreeze", "image_size", "lr", "batch_size", "feature_views", "seed", "min_sensitivity"):
        v = getattr(args, f)
        if v is not None:
            setattr(cfg, f, v)
            explicit.add(f)
    apply_recipe(cfg, explicit)
    cfg.select, cfg.epochs = "last", args.rounds * args.local_epochs
    if args.rounds < 1 or args.local_epochs < 1:
        raise MediFlowError("--rounds and --local-epochs must be at least 1")
    return FedSettings(cfg=cfg, class_names=class_names, out=args.out, rounds=args.rounds,
                       local_epochs=args.local_epochs, min_sites=min_sites, strategy=args.strategy,
                       proximal_mu=args.proximal_mu, dp_noise=args.dp_noise, dp_clip=args.dp_clip,
                       dp_delta=args.dp_delta, describe=describe)


def _simulate(args: argparse.Namespace) -> int:
    import logging

    from flwr.simulation import run_simulation

    from mediflow.federated.apps import make_client_app, make_server_app
    from mediflow.federated.partition import partition
    from mediflow.training.train import load_splits

    if args.sites < 2:
        raise MediFlowError("--sites must be at least 2")
    settings = _settings(args, [], {"partition": args.partition, "simulated": True}, args.sites)
    cfg = settings.cfg
    cfg.data = args.data
    train, val = load_splits(cfg)
    settings.class_names = train.class_names
    # Round 1 includes every site's backbone pass over its films, one site after another: on a
    # shared CPU that is far longer than a deployed server's wait for a site.
    settings.timeout = 7 * 24 * 3600.0
    seed = cfg.seed
    site_train = partition(train, args.sites, args.partition, alpha=args.alpha, seed=seed)
    site_val = partition(val, args.sites, args.partition, alpha=args.alpha, seed=seed)
    log = logging.getLogger("mediflow.federated")
    for i, (t, v) in enumerate(zip(site_train, site_val)):
        log.info("site %d: train %s | val %s", i, t.counts(), v.counts())
        if len(v) == 0 or len(t) == 0:
            raise MediFlowError(f"site {i} got no films; use fewer --sites")
    settings.describe["site_counts"] = [{"train": t.counts(), "val": v.counts()} for t, v in zip(site_train, site_val)]

    def site_data(context, class_names):
        i = int(context.node_config["partition-id"])
        return site_train[i], site_val[i]

    client_app = make_client_app(site_data, cache_dir=lambda ctx: args.cache_dir)
    server_app = make_server_app(lambda ctx: settings)
    # One virtual client at a time, with both cores: the sites share this machine's 2 CPUs anyway,
    # and one worker process keeps every site's cached features in memory between rounds.
    import os

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.sites,
                   backend_config={"client_resources": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                                                 # its own Ray instance, even when another simulation runs here
                                                 "address": "local"}})
    from pathlib import Path

    if not Path(args.out).is_file():
        raise MediFlowError("the simulation ended without a checkpoint (see the log above)")
    return 0


def run(args: argparse.Namespace) -> int:
    import logging

    # Flower logs through its own handler; without this every line would print twice.
    logging.getLogger("flwr").propagate = False
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower imports it; its set-up chatter is noise
    return _simulate(args)
