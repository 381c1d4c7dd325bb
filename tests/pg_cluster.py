"""A dedicated, throw-away PostgreSQL cluster (initdb + pg_ctl from the installed server), for tests
that stop, pause (SIGSTOP) or kill the database: never the shared server other tests use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from conftest import environment_missing
from server_process import free_port

PG_ROOT = Path("/usr/lib/postgresql")


def _bin_dir() -> Path | None:
    versions = sorted((p for p in PG_ROOT.glob("*/bin") if (p / "initdb").is_file()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


class PostgresCluster:
    """initdb in a new folder owned by the postgres user (pytest's temp folders are closed to other
    users), listening on 127.0.0.1 on a free port. `remove()` deletes it."""

    def __init__(self):
        bin_dir = _bin_dir()
        if bin_dir is None or os.geteuid() != 0 or shutil.which("runuser") is None:
            environment_missing("a dedicated PostgreSQL cluster needs the postgresql server package "
                                f"({PG_ROOT}/*/bin/initdb) and root (to run it as the postgres user)")
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="mediflow-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        shutil.chown(self.folder, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self) -> PostgresCluster:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-o",
                 f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        return self

    def stop(self) -> None:
        """pg_ctl stop (fast: open sessions are ended); resumes a paused cluster first."""
        self.signal(signal.SIGCONT)
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, ...)."""
        try:
            master = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:  # field 4 of /proc/PID/stat: the parent's pid
                children.append(int(stat.parent.name))
        return [master, *children]

    def signal(self, sig: int) -> None:
        """Send `sig` to each of the cluster's processes, by pid (SIGSTOP: the server hangs, its
        sockets stay open; SIGCONT: it carries on)."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
