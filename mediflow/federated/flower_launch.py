"""`python -m mediflow.federated.flower_launch {superlink|supernode} SECONDS [flower args]`: runs
flower-superlink or flower-supernode (Flower 1.26, pinned in pyproject.toml) with a longer window for
the app processes they start.

Why: a SuperLink/SuperNode starts a fresh `flwr-serverapp`/`flwr-clientapp` process per run/message
and gives it a token that expires unless the process reports within HEARTBEAT_DEFAULT_INTERVAL
(30 s, a module constant, not an option). On a machine busy with other work (a hospital server, or
this project's shared 2-core VM) starting Python and importing Flower can take longer: the token
expires, the SuperNode starts another process for the same message, and the round never ends.
The token only authenticates the node's own app processes on loopback, so a longer window costs
nothing but slower detection of a crashed app process (twice the window).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    which, window, *rest = argv
    from flwr.supercore.corestate import in_memory_corestate, sql_corestate

    for module in (in_memory_corestate, sql_corestate):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):  # a Flower other than the pinned one
            raise SystemExit(f"flwr {module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL: "
                             "use the Flower version pyproject.toml pins")
        module.HEARTBEAT_DEFAULT_INTERVAL = max(float(window), 30.0)
    sys.argv = [f"flower-{which}", *rest]
    if which == "superlink":
        from flwr.server.app import run_superlink

        run_superlink()
    elif which == "supernode":
        from flwr.supernode.cli import flower_supernode

        flower_supernode()
    else:
        raise SystemExit(f"unknown Flower service {which!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
