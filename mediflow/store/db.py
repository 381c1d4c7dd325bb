"""Open the study database from a URL and keep its schema at the newest Alembic revision.

SQLite (a file) is the embedded default; PostgreSQL is used by URL (`postgresql+psycopg://...`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from mediflow.errors import MediFlowError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
ENV_URL = "MEDIFLOW_DATABASE_URL"
# Seconds any one session may wait on the database (pool, connect, statements) unless told otherwise.
DEFAULT_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)
# Alembic narrates every plugin it loads at INFO; MediFlow logs the one line that matters itself.
logging.getLogger("alembic").setLevel(logging.WARNING)


class StoreError(MediFlowError):
    """The study database cannot be opened, or its schema is not the one this version expects."""


def default_database_path() -> Path:
    """`$MEDIFLOW_DATA_DIR/mediflow.db`, else the XDG data dir: a place that outlives the working directory."""
    base = os.environ.get("MEDIFLOW_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share"), "mediflow")
    return Path(base) / "mediflow.db"


def default_database_url() -> str:
    return f"sqlite:///{default_database_path()}"


def resolve_database_url(explicit: str | None = None) -> str:
    """--database-url, else MEDIFLOW_DATABASE_URL, else the default SQLite file."""
    return explicit or os.environ.get(ENV_URL) or default_database_url()


def describe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


# When the session running on this thread must be done (time.monotonic()), or None: no deadline.
_deadline: ContextVar[float | None] = ContextVar("mediflow_store_deadline", default=None)


def _remaining(default_s: float) -> float | None:
    """Seconds left before this session's deadline (at most `default_s`; never negative); None
    inside `unbounded()`."""
    deadline = _deadline.get()
    if deadline == math.inf:
        return None
    return default_s if deadline is None else max(0.0, min(default_s, deadline - time.monotonic()))


@contextmanager
def unbounded() -> Iterator[None]:
    """No client-side deadline on database waits inside this block (schema migrations: an ALTER
    TABLE on a large table may rightly take minutes)."""
    token = _deadline.set(math.inf)
    try:
        yield
    finally:
        _deadline.reset(token)


def _bounded_psycopg_connection(timeout_s: float):
    """A psycopg Connection class whose every wait on the server is bounded.

    A stopped or hung PostgreSQL keeps the TCP connection open (its kernel still acknowledges),
    so neither TCP keepalives nor the server's statement_timeout end the wait: only the client can.
    On a timeout the connection is closed, so the server rolls back whatever it had not committed.
    """
    import psycopg
    from psycopg import errors

    class BoundedConnection(psycopg.Connection):
        def wait(self, gen, interval=0.1, timeout=None):  # noqa: D102 - psycopg's own signature
            limit = _remaining(timeout_s) if timeout is None else timeout
            try:
                return super().wait(gen, interval=interval, timeout=limit)
            except errors._WaitTimeout:
                self.close()  # the protocol state is unknown: never reuse this connection
                raise psycopg.OperationalError(f"the database did not answer within {timeout_s:g} s") from None

    return BoundedConnection


def _postgres_setup(engine: Engine, timeout_s: float) -> None:
    connection_class = _bounded_psycopg_connection(timeout_s)

    import psycopg

    @event.listens_for(engine, "do_connect")
    def connect(_dialect, _record, cargs, cparams):
        left = _remaining(timeout_s)
        if left is None:
            left = timeout_s
        elif left < 0.1:  # the session's time went on a hung ping or statement: no time to connect
            raise psycopg.OperationalError(f"the database did not answer within {timeout_s:g} s")
        # psycopg counts connect_timeout in whole seconds and treats values under 2 as 2.
        cparams["connect_timeout"] = max(2, math.ceil(left))
        return connection_class.connect(*cargs, **cparams)


def failure_kind(exc: BaseException) -> str:
    """What a store error means for the caller: 'bad input' (the request holds a value the database
    refuses: retrying will not help), 'timeout', 'disk full', or 'unavailable' (any other outage)."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    # SQLSTATE 22: data exception, 23: integrity violation, 54: a value past a limit (chr(0) in text).
    if isinstance(exc, (DataError, IntegrityError)) or sqlstate[:2] in ("22", "23", "54"):
        return "bad input"
    if (isinstance(exc, PoolTimeout) or sqlstate == "57014" or "did not answer within" in text
            or "timeout expired" in text):  # psycopg's message when connect_timeout runs out
        return "timeout"  # 57014: query_canceled, which statement_timeout raises
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return "disk full"
    if sqlstate.startswith("53") or "disk is full" in text or "no space left" in text:
        return "disk full"  # class 53: insufficient resources (disk full, out of memory)
    return "unavailable"


def _sqlite_setup(engine: Engine, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Foreign keys on, WAL for concurrent readers, and writers that queue instead of failing.

    pysqlite's own transaction handling is switched off so that every transaction starts with
    BEGIN IMMEDIATE: a deferred transaction that reads and then writes can fail at once with
    'database is locked' when another writer got there first; an immediate one waits its turn.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: commits are atomic and the file never corrupts; only a power cut (not a
            # crash of the process) can roll back the last commits. FULL fsyncs every commit and
            # cost ~20 ms per analysis here, more than the model itself.
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Engine:
    """An engine for `url` whose waits (pool, connect, lock, statement) are bounded by `timeout_s`."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"database URL {url!r} is not a URL (e.g. sqlite:///path/mediflow.db "
                         "or postgresql+psycopg://user:pass@host/db)") from None
    kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            folder = Path(db).expanduser().resolve().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the database folder {folder} ({exc.strerror})") from None
        # FastAPI runs handlers in a thread pool; each request uses its own pooled connection.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": timeout_s}
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["pool_timeout"] = timeout_s
    if parsed.get_backend_name() == "postgresql":
        # The server cancels a statement that runs too long (a lock held elsewhere, a slow disk).
        kwargs["connect_args"] = {"options": f"-c statement_timeout={int(timeout_s * 1000)}"}
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        if parsed.get_backend_name() == "postgresql" and isinstance(exc, ImportError):
            # The dialect is known and only its driver is missing: the core install leaves it out.
            raise StoreError(f"a PostgreSQL study store needs the [postgres] extra: "
                             f"pip install 'mediflow[postgres]' ({exc})") from None
        raise StoreError(f"no driver for {parsed.drivername} ({exc}); "
                         f"use sqlite:/// or postgresql+psycopg://") from None
    if parsed.get_backend_name() == "sqlite":
        _sqlite_setup(engine, timeout_s)
    elif parsed.get_backend_name() == "postgresql" and engine.dialect.driver == "psycopg":
        _postgres_setup(engine, timeout_s)
    return engine


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """`alembic upgrade head` on this engine, with the migrations shipped in the package."""
    from alembic import command

    try:
        before = current_revision(engine)
        with unbounded(), engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            command.upgrade(_alembic_config(conn), revision)
        after = current_revision(engine)
    except OperationalError as exc:
        raise StoreError(f"cannot open the database {describe_url(str(engine.url))}: "
                         f"{str(exc.orig).strip().splitlines()[0]}") from None
    if after != before:
        log.info("database %s migrated from revision %s to %s", describe_url(str(engine.url)), before or "none", after)


def _missing_sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # make_engine reports it
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).expanduser()
    return None if path.exists() else path


class Store:
    """An engine plus sessions. `session()` commits on success and rolls back on error."""

    def __init__(self, url: str, *, store_images: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url = url
        self.timeout_s = timeout_s
        self.engine = make_engine(url, timeout_s)
        self.store_images = store_images
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, store_images: bool = False,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> Store:
        """Open and (by default) migrate to head; with migrate=False, refuse an out-of-date schema."""
        if not migrate and (missing := _missing_sqlite_file(url)) is not None:
            raise StoreError(f"no database file {missing} (give --database-url, or run `mediflow db upgrade`)")
        store = cls(url, store_images=store_images, timeout_s=timeout_s)
        if migrate:
            upgrade(store.engine)
        else:
            store.require_current()
        return store

    def require_current(self) -> None:
        try:
            have = current_revision(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database {describe_url(self.url)}: "
                             f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}") from None
        if have != head_revision():
            raise StoreError(f"database {describe_url(self.url)} is at schema revision {have or 'none'}, "
                             f"this MediFlow needs {head_revision()}: run `mediflow db upgrade`")

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    @contextmanager
    def session(self, timeout_s: float | None = None) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error. Every wait on the
        database inside it (pool, connect, statements, commit) shares one deadline: `timeout_s`
        seconds from now (default: the store's timeout); past it, OperationalError."""
        token = _deadline.set(time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s))
        try:
            with self._sessions() as s, s.begin():
                yield s
        finally:
            _deadline.reset(token)

    def dispose(self) -> None:
        self.engine.dispose()
