"""`mediflow serve` options of the clinical workflow: the study store, images, API keys, exposure."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("studies and access")
    g.add_argument("--database-url", help="study store (default: MEDIFLOW_DATABASE_URL, else the SQLite file "
                                          "mediflow.db in the user's data folder, e.g. ~/.local/share/mediflow)")
    g.add_argument("--no-store", action="store_true", help="keep no studies (no worklist, no audit log)")
    g.add_argument("--store-images", action="store_true", default=None,
                   help="also keep each upload's bytes in the store (needed by `mediflow feedback export`)")
    g.add_argument("--api-keys-file", help="file of 'name:key' lines; with keys set, /api/* requires a key")
    g.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without API keys")


def overrides(args: argparse.Namespace, env_database_url: str | None) -> dict[str, Any]:
    """Settings overrides from the flags; the store defaults to a SQLite file unless --no-store."""
    from mediflow.store.db import default_database_url

    out: dict[str, Any] = {}
    if args.no_store:
        out["database_url"] = None
    elif args.database_url:
        out["database_url"] = args.database_url
    elif env_database_url is None:
        out["database_url"] = default_database_url()
    if args.store_images:
        out["store_images"] = True
    if args.api_keys_file:
        out["api_keys_file"] = args.api_keys_file
    return out


def check_exposure(settings, *, insecure: bool) -> None:
    from mediflow.serving.auth import check_exposure as check
    from mediflow.serving.auth import load_api_keys

    check(settings.host, load_api_keys(settings.api_keys, settings.api_keys_file), insecure=insecure)
