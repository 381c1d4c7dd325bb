"""The deployed federation on Flower's Deployment Engine: the apps a SuperLink and the SuperNodes
run, the Flower App Bundle (FAB) that names them, and the SuperLink Control API calls the server
command makes.

Flower 1.26 runs a ServerApp and every ClientApp message in a fresh process (`flwr-serverapp`,
`flwr-clientapp`) that loads the app named in the run's FAB. Our FAB is a pyproject.toml and one
module that imports `server_app`/`client_app` from here, so the installed `mediflow` package is what
runs (a FAB installs no dependencies). What a site's ClientApp reads comes from its own SuperNode's
node config (`data-dir`, `cache-dir`), which never leaves the site; what the ServerApp does comes from
the run config `settings` (a FedSettings as JSON) that the server command submits.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from flwr.app import Context

from mediflow import __version__
from mediflow.data.dataset import Samples
from mediflow.errors import MediFlowError
from mediflow.federated.apps import FedSettings, make_client_app, make_server_app
from mediflow.training.config import TrainConfig

FAB_MODULE = "mediflow_federation_app"
FAB_PUBLISHER = "mediflow"
FAB_NAME = "mediflow-federation"


def _site_data(context: Context, cfg: TrainConfig, class_names: list[str]) -> tuple[Samples, Samples]:
    """This site's patient-grouped train/validation split of its `data-dir` (the split `mediflow
    train` makes, with the federation's seed). Raises MediFlowError when the site's classes differ
    from the federation's."""
    from mediflow.training.train import load_splits

    data = context.node_config.get("data-dir")
    if not data:
        raise MediFlowError("this SuperNode has no data-dir in its node config "
                            "(start it with mediflow federated client)")
    cfg.data = str(data)
    train, val = load_splits(cfg)
    if train.class_names != class_names:
        raise MediFlowError(f"this site's classes {train.class_names} differ from the federation's {class_names}")
    return train, val


def _cache_dir(context: Context) -> str | None:
    return str(context.node_config.get("cache-dir") or "") or None


def _settings(context: Context) -> FedSettings:
    return FedSettings.from_dict(json.loads(str(context.run_config["settings"])))


client_app = make_client_app(_site_data, cache_dir=_cache_dir)
server_app = make_server_app(_settings)


def fab_bytes() -> bytes:
    """The FAB (a zip Flower builds) naming this module's apps; run config key `settings` (str)."""
    from flwr.cli.build import build_fab_from_files

    pyproject = f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{FAB_NAME}"
version = "{__version__}"
description = "MediFlow federated training (the apps come from the installed mediflow package)"
license = "Apache-2.0"
dependencies = ["mediflow=={__version__}"]

[tool.flwr.app]
publisher = "{FAB_PUBLISHER}"

[tool.flwr.app.components]
serverapp = "{FAB_MODULE}:server_app"
clientapp = "{FAB_MODULE}:client_app"

[tool.flwr.app.config]
settings = ""
"""
    module = ('"""MediFlow\'s federated apps: the installed mediflow package provides them."""\n'
              "from mediflow.federated.deploy import client_app, server_app  # noqa: F401\n")
    return build_fab_from_files({"pyproject.toml": pyproject.encode(), f"{FAB_MODULE}.py": module.encode()})


def control_channel(address: str, root_certificates: bytes | None, tls_name: str | None = None):
    """A gRPC channel to the SuperLink's Control API at `address` (loopback): plaintext when
    `root_certificates` is None, else TLS verified against them, checking the certificate for
    `tls_name` (the name the SuperLink's certificate was issued for) rather than the loopback address."""
    import grpc
    from flwr.common.grpc import GRPC_MAX_MESSAGE_LENGTH

    options = [("grpc.max_send_message_length", GRPC_MAX_MESSAGE_LENGTH),
               ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_LENGTH)]
    if root_certificates is None:
        return grpc.insecure_channel(address, options=options)
    if tls_name:
        options.append(("grpc.ssl_target_name_override", tls_name))
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates), options=options)


def wait_ready(channel, timeout: float, alive) -> None:
    """Block until the Control API answers, or raise MediFlowError after `timeout` seconds or
    when `alive()` turns False (the SuperLink exited)."""
    import grpc

    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise MediFlowError("the Flower SuperLink exited while starting (see its log above)")
        try:
            grpc.channel_ready_future(channel).result(timeout=2)
            return
        except grpc.FutureTimeoutError:
            if time.monotonic() > deadline:
                raise MediFlowError(f"the Flower SuperLink did not start within {timeout:.0f} s") from None


def register_supernode(channel, public_key_file: str) -> int:
    """Registers a SuperNode's public key (OpenSSH format, NIST EC curve, as `flwr supernode
    register` takes) with the SuperLink for SuperNode authentication. Returns its node id."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=no-name-in-module
    from flwr.proto.control_pb2_grpc import ControlStub

    if not Path(public_key_file).is_file():
        raise MediFlowError(f"SuperNode public key {public_key_file} not found")
    res = ControlStub(channel).RegisterNode(RegisterNodeRequest(public_key=try_load_public_key(Path(public_key_file))))
    if not res.node_id:
        raise MediFlowError(f"the SuperLink refused SuperNode key {public_key_file}")
    return int(res.node_id)


def start_run(channel, settings: FedSettings) -> int:
    """Submits the federation (our FAB with `settings`) to the SuperLink, as `flwr run` does.
    Returns the run id."""
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.common.typing import Fab
    from flwr.proto.control_pb2 import StartRunRequest  # pylint: disable=no-name-in-module
    from flwr.proto.control_pb2_grpc import ControlStub

    fab = fab_bytes()
    req = StartRunRequest(fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {})),
                          override_config=user_config_to_proto({"settings": json.dumps(settings.to_dict())}))
    res = ControlStub(channel).StartRun(req)
    if not res.HasField("run_id"):
        raise MediFlowError("the SuperLink did not accept the federated run (see its log above)")
    return int(res.run_id)


def wait_run(channel, run_id: int, alive, poll: float = 5.0) -> tuple[str, str]:
    """Polls the run until it finishes; returns (sub_status, details): sub_status 'completed',
    'failed' or 'stopped'. Raises MediFlowError when `alive()` turns False first."""
    from flwr.common.constant import Status
    from flwr.common.serde import run_from_proto
    from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=no-name-in-module
    from flwr.proto.control_pb2_grpc import ControlStub

    stub = ControlStub(channel)
    while True:
        if not alive():
            raise MediFlowError("the Flower SuperLink exited during the federation (see its log above)")
        res = stub.ListRuns(ListRunsRequest(run_id=run_id))
        run = run_from_proto(res.run_dict[run_id])
        if run.status.status == Status.FINISHED:
            return run.status.sub_status, run.status.details
        time.sleep(poll)
