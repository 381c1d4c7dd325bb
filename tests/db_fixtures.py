"""Fixtures for the study store tests: a fresh database on SQLite always, on PostgreSQL when
MEDIFLOW_TEST_POSTGRES_URL names a server whose user may create databases (CI starts one).

Test modules import the fixtures they use: `from db_fixtures import database_url, ...`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import environment_missing

POSTGRES_ENV = "MEDIFLOW_TEST_POSTGRES_URL"
FAKE_MODEL = {"architecture": "efficientnet_lite0", "version": "test", "sha256": "0" * 64}


def fake_result(p_pneumonia: float, threshold: float | None = 0.4, review_below: float = 0.7) -> dict:
    """A Predictor.response()-shaped result with a chosen P(PNEUMONIA), for store-level tests."""
    pred = "PNEUMONIA" if p_pneumonia >= (0.5 if threshold is None else threshold) else "NORMAL"
    confidence = p_pneumonia if pred == "PNEUMONIA" else 1 - p_pneumonia
    return {"prediction": pred, "confidence": confidence, "needs_review": confidence < review_below,
            "probabilities": {"NORMAL": 1 - p_pneumonia, "PNEUMONIA": p_pneumonia},
            "threshold": threshold, "model": FAKE_MODEL}


def add_fake_study(store, p_pneumonia: float, *, image: bytes | None = None, fmt: str = "jpeg",
                   threshold: float | None = 0.4):
    """A study straight into the store; returns its id."""
    from mediflow.store import repository

    with store.session() as s:
        return repository.add_study(s, repository.SourceInfo("a" * 64, fmt), fake_result(p_pneumonia, threshold),
                                    positive_class="PNEUMONIA", image=image).id


def _postgres_database(base_url: str) -> Iterator[str]:
    """A new, empty database on the server of `base_url`, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mediflow_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        environment_missing(f"PostgreSQL tests need {POSTGRES_ENV}=postgresql+psycopg://user:pass@host/db "
                            "(a user allowed to CREATE DATABASE); .ci/run starts one")
    yield from _postgres_database(base)


@pytest.fixture
def store(database_url: str):
    from mediflow.store.db import Store

    s = Store.open(database_url)
    yield s
    s.dispose()


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model: Path):
    from mediflow.inference.predictor import Predictor

    return Predictor.load(tiny_model)


@pytest.fixture
def make_client(tiny_predictor):
    """make_client(database_url=..., api_keys=..., store_images=...) -> a TestClient on a fresh app."""
    from fastapi.testclient import TestClient

    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    made = []

    def make(**settings) -> TestClient:
        # Explicit Nones: a MEDIFLOW_* variable in the environment must not leak into a test.
        settings = {"database_url": None, "api_keys": None, "api_keys_file": None, **settings}
        app = create_app(Settings(**settings), predictor=tiny_predictor)
        client = TestClient(app)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
        if client.app.state.store is not None:
            client.app.state.store.dispose()
