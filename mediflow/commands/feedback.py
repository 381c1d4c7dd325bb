"""`mediflow feedback export DIR [--database-url URL]`: radiologists' reads as training data."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("feedback", help="export reviewed studies for retraining",
                       description="Active learning: studies a radiologist reviewed (and whose images the "
                                   "server stored with --store-images) become a class-folder dataset that "
                                   "`mediflow train --extra-data DIR` accepts.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = actions.add_parser("export", help="write DIR/<label>/<study_id>.<ext> and DIR/manifest.csv")
    e.add_argument("dir", metavar="DIR", help="output folder (created; files of earlier exports are replaced)")
    e.add_argument("--database-url", help="study store (default: MEDIFLOW_DATABASE_URL, else the default SQLite file)")
    return p


def run(args: argparse.Namespace) -> int:
    from mediflow.store.db import Store, resolve_database_url
    from mediflow.store.export import export_feedback

    store = Store.open(resolve_database_url(args.database_url), migrate=False)
    try:
        summary = export_feedback(store, args.dir)
    finally:
        store.dispose()
    total = sum(summary.written.values())
    per_class = ", ".join(f"{k}: {v}" for k, v in sorted(summary.written.items())) or "none"
    print(f"exported {total} reviewed studies ({per_class}) to {args.dir}; manifest {summary.manifest}")
    if summary.without_image:
        print(f"skipped {summary.without_image} reviewed studies with no stored image "
              "(the server keeps images only with --store-images)")
    return 0
