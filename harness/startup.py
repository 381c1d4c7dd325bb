"""Starting a real process for a test or a benchmark: a free loopback port, and waiting until the
process answers, or saying why it did not (its exit status and the end of its log)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], *, name: str, timeout: float,
               log: Callable[[], str], give_up: Callable[[], object], interval: float = 0.2) -> None:
    """Call `ready` every `interval` seconds until it returns True; an HTTP error means not yet.
    RuntimeError with the end of the log when `proc` exits first, or when `timeout` seconds pass
    (after `give_up`, which stops the process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()[-3000:]}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    give_up()
    raise RuntimeError(f"{name} did not answer within {timeout:.0f} s:\n{log()[-3000:]}")
