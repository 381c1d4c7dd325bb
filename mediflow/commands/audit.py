"""`mediflow audit [--since T] [--until T] [--actor NAME] [--study ID] [--limit N] [--offset N] [--json]`"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("audit", help="print the audit log (who called which API route, when, with what outcome)",
                       description="Reads the study database's audit log: the rows GET /api/audit returns, newest "
                                   "first; times in UTC, study ids as the API writes them.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--database-url", help="default: MEDIFLOW_DATABASE_URL, else the default SQLite file")
    p.add_argument("--since", help="from this time (ISO 8601, e.g. 2026-12-07T09:00Z; no zone: UTC), inclusive")
    p.add_argument("--until", help="before this time (ISO 8601; no zone: UTC)")
    p.add_argument("--actor", help="one API key's name (or anonymous, '(no key)', '(invalid key)')")
    p.add_argument("--study", help="one study id, with or without dashes")
    p.add_argument("--limit", type=int, default=100, help="rows to print")
    p.add_argument("--offset", type=int, default=0, help="rows to skip (newest first)")
    p.add_argument("--json", action="store_true", help="print the JSON body GET /api/audit would return")
    return p


def sqlite_file_missing(url: str) -> bool:
    """A SQLite URL naming a file that does not exist: opening it would create an empty database."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # an unparseable URL: Store reports it
        return False
    return parsed.get_backend_name() == "sqlite" and bool(parsed.database) and parsed.database != ":memory:" \
        and not Path(parsed.database).expanduser().is_file()


def run(args: argparse.Namespace) -> int:
    from mediflow.errors import MediFlowError
    from mediflow.store.audit import AuditFilter, audit_page, parse_study_id, parse_time
    from mediflow.store.db import Store, current_revision, describe_url, resolve_database_url

    if args.limit < 1 or args.offset < 0:
        raise MediFlowError("--limit must be 1 or more and --offset 0 or more")
    where = AuditFilter(since=parse_time(args.since, "--since") if args.since else None,
                        until=parse_time(args.until, "--until") if args.until else None,
                        actor=args.actor, study_id=parse_study_id(args.study) if args.study else None)
    url = resolve_database_url(args.database_url)
    if sqlite_file_missing(url):
        raise MediFlowError(f"{describe_url(url)}: no study database there (mediflow serve creates it)")
    store = Store(url)
    try:
        if current_revision(store.engine) is None:
            raise MediFlowError(f"{describe_url(url)}: no study database there (mediflow serve creates it)")
        with store.session() as s:
            page = audit_page(s, where, limit=args.limit, offset=args.offset)
    finally:
        store.dispose()
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    shown = len(page["items"])
    print(f"{page['total']} audit entr{'y' if page['total'] == 1 else 'ies'} match; "
          f"showing {shown} from {args.offset + 1 if shown else 0}, newest first")
    print(f"{'time (UTC)':<25}  {'actor':<20}  {'status':>6}  {'method':<6}  {'route':<40}  study")
    for row in page["items"]:
        print(f"{row['at']:<25}  {row['actor'][:20]:<20}  {row['status_code']:>6}  {row['method']:<6}  "
              f"{row['route'][:40]:<40}  {row['study_id'] or '-'}")
    return 0
