"""Tests of mediflow/serving/ in-process (FastAPI TestClient or a thread): the API, auth, audit, studies."""
