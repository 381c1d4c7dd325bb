"""`mediflow federated simulate|server|client`: federated training on Flower (docs/federated.md).

simulate runs N virtual sites in Flower's simulation engine; server and client are the deployed pair:
`server` runs a Flower SuperLink and submits the federation (our ServerApp) to it, `client` runs a
Flower SuperNode whose ClientApp trains on the site's folder. Both pass TLS and SuperNode
authentication through to flower-superlink / flower-supernode."""

from __future__ import annotations

import argparse

from mediflow.commands import _preprocessing_options as preprocessing_options
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
    preprocessing_options.add_arguments(p)
    p.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox"])
    p.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx's mu (default 0.01)")
    p.add_argument("--dp-noise", type=float, default=0.0,
                   help="> 0: central DP with client-side clipping, this Gaussian noise multiplier")
    p.add_argument("--dp-clip", type=float, default=1.0, help="DP clipping norm of a site's update (default 1)")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="DP delta for the recorded epsilon")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("federated", help="train across sites with Flower without moving images",
                       description="Federated training: a simulation on one machine, or a real server and clients.")
    fs = p.add_subparsers(dest="federated_command", metavar="{simulate,server,client}", required=True)

    s = fs.add_parser("simulate", help="N simulated hospitals on this machine (Flower's simulation engine)")
    s.add_argument("--data", required=True, help="dataset root (train/ or class folders), split among the sites")
    s.add_argument("--sites", type=int, required=True)
    s.add_argument("--partition", default="patient", choices=PARTITION_CHOICES,
                   help="patient: IID by patient; label-skew: Dirichlet class balance; framing: by film framing")
    s.add_argument("--alpha", type=float, default=0.5, help="label-skew Dirichlet alpha (default 0.5)")
    s.add_argument("--cache-dir", help="sites' feature cache folder (frozen recipe); reruns skip the backbone pass")
    s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="also show Flower's and Ray's own output (colour codes, Ray's worker lines and warnings)")
    _recipe_args(s)

    v = fs.add_parser("server", help="the aggregator: a Flower SuperLink running the federation; writes the checkpoint",
                      description="Runs a Flower SuperLink, waits for --sites SuperNodes (mediflow federated client), "
                                  "runs the rounds and writes the global checkpoint (--out). Exits when done.")
    v.add_argument("--sites", type=int, required=True, help="sites that must take part in every round")
    v.add_argument("--listen", default="0.0.0.0:9092",
                   help="address the sites connect to (Flower Fleet API; default 0.0.0.0:9092)")
    v.add_argument("--classes", default="NORMAL,PNEUMONIA",
                   help="class folder names every site must have, in order (default NORMAL,PNEUMONIA)")
    v.add_argument("--round-timeout", type=float, default=3600.0,
                   help="seconds to wait for the sites' replies in a round (default 3600; round 1 includes each "
                        "site's backbone pass over its films)")
    v.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for the SuperLink to start")
    _app_start_arg(v)
    _tls_args(v, server=True)
    v.add_argument("--supernode-key", action="append", default=[], metavar="PUBLIC_KEY",
                   help="a site's SuperNode public key (OpenSSH, NIST EC curve, e.g. ssh-keygen -t ecdsa -b 384); "
                        "repeat per site. Enables Flower SuperNode authentication: unlisted SuperNodes are refused. "
                        "Needs TLS")
    _recipe_args(v)

    c = fs.add_parser("client", help="one hospital: a Flower SuperNode training on this site's films",
                      description="Runs a Flower SuperNode for this site. Its films stay here: only the trained "
                                  "parameters and aggregate metrics go to the server. Runs until stopped "
                                  "(or until --max-wait-time without reaching the server).")
    c.add_argument("--data", required=True, help="this site's dataset root (train/ or class folders)")
    c.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's --listen address")
    c.add_argument("--cache-dir",
                   help="keep this site's feature cache here (default: a temporary folder removed on exit)")
    c.add_argument("--max-wait-time", type=float,
                   help="give up after this many seconds without reaching the server (default: keep trying)")
    _app_start_arg(c)
    _tls_args(c, server=False)
    c.add_argument("--auth-key", metavar="PRIVATE_KEY",
                   help="this SuperNode's private key (PEM/OpenSSH, NIST EC) for SuperNode authentication; "
                        "the server lists its public key with --supernode-key. Needs TLS")
    return p


def _app_start_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app-start-timeout", type=float, default=120.0,
                   help="seconds a Flower app process may take to start before Flower gives up on it "
                        "(default 120; Flower's own is 30, too short on a busy machine)")


def _flower(service: str, args: argparse.Namespace) -> list[str]:
    """Command line starting flower-superlink/flower-supernode through our launcher (see
    mediflow/federated/flower_launch.py for why)."""
    import sys

    return [sys.executable, "-m", "mediflow.federated.flower_launch", service, str(args.app_start_timeout)]


def _tls_args(p: argparse.ArgumentParser, server: bool) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="no TLS: plaintext gRPC (only for tests on loopback or a network you trust)")
    if server:
        p.add_argument("--ssl-certfile", help="TLS certificate of this server (PEM)")
        p.add_argument("--ssl-keyfile", help="TLS private key of this server (PEM)")
        p.add_argument("--ssl-ca-certfile", help="CA certificate that signed --ssl-certfile (PEM)")
    else:
        p.add_argument("--root-certificates", metavar="CA_PEM",
                       help="CA certificate the server's TLS certificate must chain to (PEM)")


def _settings(args: argparse.Namespace, class_names: list[str], describe: dict, min_sites: int):
    from mediflow.federated.apps import FedSettings
    from mediflow.training.config import TrainConfig, apply_recipe

    cfg = TrainConfig(recipe=args.recipe, progress=False)
    explicit = set()
    for f in ("arch", "weights", "unfreeze", "image_size", "lr", "batch_size", "feature_views", "seed",
              "min_sensitivity", "augment", "framing", "intensity"):
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

    def site_data(context, cfg, class_names):
        i = int(context.node_config["partition-id"])
        return site_train[i], site_val[i]

    client_app = make_client_app(site_data, cache_dir=lambda ctx: args.cache_dir)
    server_app = make_server_app(lambda ctx: settings)
    # One virtual client at a time, with both cores: the sites share this machine's 2 CPUs anyway,
    # and one worker process keeps every site's cached features in memory between rounds.
    import os

    from mediflow.logs import filtered_stderr

    verbose = bool(getattr(args, "verbose", False))
    if not verbose:
        # Our own lines say what each round and site did (apps.Audit); Flower's INFO block per round and
        # its final dump of every metric stay out of the log, as do Ray's worker lines.
        logging.getLogger("flwr").setLevel(logging.WARNING)
    log.info("simulating %d sites, %d rounds of %s (recipe %s): one line per round phase and per site follows",
             args.sites, args.rounds, settings.strategy, cfg.recipe)
    with filtered_stderr(enabled=not verbose):
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.sites,
                       backend_config={"client_resources": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                                                     # its own Ray instance, even when another simulation runs here
                                                     "address": "local",
                                                     # workers' stdout/stderr reach the log only with --verbose
                                                     "log_to_driver": verbose}})
    from pathlib import Path

    if not Path(args.out).is_file():
        raise MediFlowError("the simulation ended without a checkpoint (see the log above)")
    return 0


def _flower_env(flwr_home: str) -> dict[str, str]:
    """Environment for the Flower processes: this Python's scripts first on PATH (flower-superlink and
    flower-supernode start flower-superexec by name) and a private FLWR_HOME for installed FABs."""
    import os
    import sys
    from pathlib import Path

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_HOME", flwr_home)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(name: str) -> str:
    import shutil
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        raise MediFlowError(f"{name} not found: install Flower (pip install 'flwr[simulation]==1.26.1')")
    return found


def _stop(proc, grace: float = 20.0) -> None:
    """Stops a Flower process we started and the helpers it started (its own process group)."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def _file(path: str | None, what: str) -> str:
    from pathlib import Path

    if not path or not Path(path).is_file():
        raise MediFlowError(f"{what} {path} not found")
    return str(Path(path).resolve())


def _sigterm_exits() -> None:
    import signal

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _server(args: argparse.Namespace) -> int:
    import logging
    import subprocess
    import tempfile
    from pathlib import Path

    from mediflow.federated import deploy

    log = logging.getLogger("mediflow.federated")
    if args.sites < 1:
        raise MediFlowError("--sites must be at least 1")
    tls = [args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile]
    if args.insecure == any(tls) or (any(tls) and not all(tls)):
        raise MediFlowError("give either --insecure or all of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
    if args.supernode_key and args.insecure:
        raise MediFlowError("--supernode-key (SuperNode authentication) needs TLS, not --insecure")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) < 2:
        raise MediFlowError("--classes needs at least two class names")
    settings = _settings(args, classes, {"deployed": True}, args.sites)
    settings.out = str(Path(args.out).resolve())
    settings.timeout = float(args.round_timeout)
    Path(settings.out).parent.mkdir(parents=True, exist_ok=True)
    keys = [_file(k, "SuperNode public key") for k in args.supernode_key]

    # The Control API (submit runs, register SuperNodes) and the ServerAppIo API have no account
    # authentication here: they listen on loopback only; only the Fleet API faces the sites.
    control = f"127.0.0.1:{_free_port()}"
    _script("flower-superexec")  # the SuperLink starts it by name
    cmd = [*_flower("superlink", args), "--fleet-api-address", args.listen, "--control-api-address", control,
           "--serverappio-api-address", f"127.0.0.1:{_free_port()}"]
    if args.insecure:
        cmd.append("--insecure")
        root = None
    else:
        cmd += ["--ssl-certfile", _file(args.ssl_certfile, "--ssl-certfile"),
                "--ssl-keyfile", _file(args.ssl_keyfile, "--ssl-keyfile"),
                "--ssl-ca-certfile", _file(args.ssl_ca_certfile, "--ssl-ca-certfile")]
        root = Path(args.ssl_ca_certfile).read_bytes()
    if keys:
        cmd.append("--enable-supernode-auth")
    with tempfile.TemporaryDirectory(prefix="mediflow-flwr-") as home:
        proc = subprocess.Popen(cmd, env=_flower_env(home), cwd=home, start_new_session=True)
        _sigterm_exits()
        try:
            alive = lambda: proc.poll() is None  # noqa: E731
            host = args.listen.rsplit(":", 1)[0].strip("[]")
            channel = deploy.control_channel(control, root, None if host in ("0.0.0.0", "::", "") else host)
            deploy.wait_ready(channel, args.start_timeout, alive)
            for k in keys:
                log.info("registered SuperNode %d (%s)", deploy.register_supernode(channel, k), Path(k).name)
            run_id = deploy.start_run(channel, settings)
            log.info("federation started (run %d): waiting for %d sites on %s", run_id, args.sites, args.listen)
            status, details = deploy.wait_run(channel, run_id, alive)
            channel.close()
        finally:
            _stop(proc)
    if status != "completed" or not Path(settings.out).is_file():
        raise MediFlowError(f"the federated run {status}: {details or 'see the log above'}")
    log.info("global checkpoint: %s (what the server received: %s.audit.json)", settings.out, settings.out)
    return 0


def _client(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile
    from pathlib import Path

    import tomli_w

    from mediflow.data.dataset import resolve_split_dir, scan_class_folders

    if args.insecure == bool(args.root_certificates):
        raise MediFlowError("give either --insecure or --root-certificates")
    if args.auth_key and args.insecure:
        raise MediFlowError("--auth-key (SuperNode authentication) needs TLS, not --insecure")
    if not Path(args.data).is_dir():
        raise MediFlowError(f"--data {args.data} is not a folder")
    scan_class_folders(resolve_split_dir(args.data, "train"))  # fails now, not in round 1, on a folder without classes
    with tempfile.TemporaryDirectory(prefix="mediflow-flwr-") as home:
        # The node config stays on this machine: the ClientApp reads its data folder from it.
        node = {"data-dir": str(Path(args.data).resolve()),
                "cache-dir": str(Path(args.cache_dir).resolve()) if args.cache_dir else str(Path(home) / "features")}
        node_toml = Path(home) / "node-config.toml"
        node_toml.write_text(tomli_w.dumps(node))
        _script("flower-superexec")  # the SuperNode starts it by name
        cmd = [*_flower("supernode", args), "--superlink", args.server, "--node-config", str(node_toml),
               # the ClientApp processes talk to this SuperNode on loopback only
               "--clientappio-api-address", f"127.0.0.1:{_free_port()}"]
        if args.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", _file(args.root_certificates, "--root-certificates")]
        if args.auth_key:
            cmd += ["--auth-supernode-private-key", _file(args.auth_key, "--auth-key")]
        if args.max_wait_time is not None:
            cmd += ["--max-wait-time", str(args.max_wait_time)]
        proc = subprocess.Popen(cmd, env=_flower_env(home), cwd=home, start_new_session=True)
        _sigterm_exits()
        try:
            rc = proc.wait()
        except SystemExit:  # SIGTERM: the site's operator (or its service manager) stops the client
            rc = 0
        finally:
            _stop(proc)
    if rc != 0:
        raise MediFlowError(f"the Flower SuperNode stopped (exit {rc}): see its log above "
                            "(unreachable server past --max-wait-time, TLS or authentication refused)")
    return 0


def run(args: argparse.Namespace) -> int:
    import logging

    # Flower logs through its own handler; without this every line would print twice.
    logging.getLogger("flwr").propagate = False
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower imports it; its set-up chatter is noise
    return {"simulate": _simulate, "server": _server, "client": _client}[args.federated_command](args)
