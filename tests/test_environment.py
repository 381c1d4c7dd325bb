"""The pieces of the test environment that other tests rely on, checked one by one so that a CI log
names what is missing. On a developer's machine a missing piece skips; under CI=true it fails
(conftest.environment_missing). Node and npm are required once the web app (frontend/package.json)
exists."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, FRONTEND, environment_missing
from db_fixtures import POSTGRES_ENV


def check_chromium() -> None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        environment_missing(f"no executable Chromium at {CHROMIUM} (apt-get install -y chromium)")
    r = subprocess.run([str(CHROMIUM), *CHROMIUM_ARGS, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Chromium" in r.stdout, r.stderr[-500:]


def check_playwright() -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        environment_missing("the playwright package is not installed (pip install -e '.[test]')")
    assert callable(sync_playwright)


def check_postgres() -> None:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        environment_missing(f"{POSTGRES_ENV} is not set (.ci/run starts a PostgreSQL server and sets it)")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            # The store tests create one database per test.
            assert conn.execute(text("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user")).scalar()
    finally:
        engine.dispose()


def check_tool(name: str) -> None:
    path = shutil.which(name)
    if path is None:
        environment_missing(f"the web app (frontend/package.json) needs {name} on PATH (apt-get install -y nodejs npm)")
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-500:]


CHECKS = {"chromium": check_chromium, "playwright": check_playwright, "postgresql": check_postgres}
if (FRONTEND / "package.json").is_file():
    CHECKS |= {"node": lambda: check_tool("node"), "npm": lambda: check_tool("npm")}


@pytest.mark.parametrize("piece", sorted(CHECKS))
def test_required_environment_piece(piece: str):
    CHECKS[piece]()
