"""`mediflow db upgrade|current [--database-url URL]`: the study store's schema."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("db", help="create or migrate the study database",
                       description="`mediflow serve` upgrades its database on start; this does it ahead of time.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("upgrade", "apply every migration (alembic upgrade head)"),
                       ("current", "print the schema revision the database is at")):
        a = actions.add_parser(name, help=text)
        a.add_argument("--database-url", help="default: MEDIFLOW_DATABASE_URL, else the default SQLite file")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.store.db import Store, current_revision, describe_url, head_revision, resolve_database_url

    url = resolve_database_url(args.database_url)
    if args.action == "upgrade":
        store = Store.open(url, migrate=True)
        print(f"{describe_url(url)}: schema at revision {current_revision(store.engine)} (head)")
    else:
        store = Store(url)
        have = current_revision(store.engine)
        print(f"{describe_url(url)}: revision {have or 'none (empty database)'}; this MediFlow needs {head_revision()}")
    store.dispose()
    return 0
