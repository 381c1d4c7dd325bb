"""What `/health` reports: is the model loaded (liveness) and can the study store take writes (readiness).

The store's state comes from two sources: a bounded probe run by `/health` itself (the database
answers a query; a SQLite file's disk has room), and the outcome of the last real write (a full
PostgreSQL disk, or a write that timed out, shows up only there). A failed write keeps the store
`failing` until a later write succeeds (or, for an outage or a timeout, the probe does), or until
FAILURE_MEMORY_S have passed.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mediflow.store.db import Store, failure_kind

log = logging.getLogger("mediflow.serve")

# How long a failed write marks the store as failing when nothing has succeeded since.
FAILURE_MEMORY_S = 60.0
# Below this much free space next to a SQLite file, the store is reported full: SQLite needs room
# for its journal before it can commit anything.
MIN_FREE_BYTES = 4 * 1024 * 1024


class StoreHealth:
    """The last storage failure (kind, when) and whether anything has succeeded since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failure: tuple[str, float] | None = None

    def failed(self, kind: str) -> None:
        """Record a storage failure of `kind` (see store.db.failure_kind); bad input is not one."""
        if kind != "bad input":
            with self._lock:
                self._failure = (kind, time.monotonic())

    def succeeded(self) -> None:
        """Forget the last failure: a write (or a probe that shows the cause gone) succeeded."""
        with self._lock:
            self._failure = None

    def recent_failure(self) -> str | None:
        """The kind of the last failure when nothing has succeeded since, within FAILURE_MEMORY_S."""
        with self._lock:
            if self._failure is None or time.monotonic() - self._failure[1] > FAILURE_MEMORY_S:
                return None
            return self._failure[0]


def sqlite_free_bytes(store: Store) -> int | None:
    """Free bytes on the file system of a SQLite store's file; None for other databases."""
    url = make_url(store.url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    try:
        return shutil.disk_usage(Path(url.database).expanduser().resolve().parent).free
    except OSError:
        return None


def probe_store(store: Store, health: StoreHealth, timeout_s: float) -> dict[str, Any]:
    """{"status": "ok"|"failing", "problem": kind or None}: one bounded query, the disk's free
    space (SQLite), and the last write's outcome. Runs on a worker thread (it blocks)."""
    free = sqlite_free_bytes(store)
    if free is not None and free < MIN_FREE_BYTES:
        return {"status": "failing", "problem": "disk full"}
    try:
        with store.session(timeout_s=timeout_s) as s:
            s.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        kind = failure_kind(exc)
        health.failed(kind)
        return {"status": "failing", "problem": kind}
    problem = health.recent_failure()
    if problem in ("unavailable", "timeout") or (problem == "disk full" and free is not None):
        # The database answers again; a SQLite file's disk has room again (measured above). A full
        # PostgreSQL disk shows only in a write, so that one is remembered.
        health.succeeded()
        problem = None
    return {"status": "failing" if problem else "ok", "problem": problem}
