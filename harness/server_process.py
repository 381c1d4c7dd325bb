"""A real `mediflow serve` in a subprocess (uvicorn, a real port), for restart and browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from startup import free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mediflow", "serve", "--port", str(self.port), *self.args],
                                     cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_ready(self.proc, lambda: httpx.get(self.url + "/health", timeout=2).status_code == 200,
                   name="server", timeout=timeout, log=self.log, give_up=self.stop, interval=0.3)
        return self

    def stop(self) -> bool:
        """SIGTERM (uvicorn's graceful shutdown; it re-raises the signal once done), SIGKILL if it hangs.
        True when the server shut down gracefully."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False
        return rc in (0, -signal.SIGTERM) and "Finished server process" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
