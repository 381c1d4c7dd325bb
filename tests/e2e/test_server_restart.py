"""Studies, reviews, images and the audit log survive a restart of a real server on a SQLite file."""

from __future__ import annotations

import httpx
import pytest
from conftest import jpeg_bytes, xray_like
from server_process import ServerProcess

from mediflow.store import repository
from mediflow.store.db import Store

KEY = "restart-test-key-0123456789"
PATIENT_FILE_NAME = "person4321_virus_8765.jpeg"


@pytest.mark.slow
def test_data_survives_a_server_restart(tiny_model, tmp_path):
    db = f"sqlite:///{tmp_path / 'studies.db'}"
    server = ServerProcess(["--model", str(tiny_model), "--database-url", db, "--store-images"],
                           tmp_path / "server.log", env={"MEDIFLOW_API_KEYS": f"dr_rest:{KEY}"})
    auth = {"Authorization": f"Bearer {KEY}"}
    films = [jpeg_bytes(xray_like(i % 2, seed=70 + i)) for i in range(3)]
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
            ids = [c.post("/api/vision/analyze",
                          files={"file": (PATIENT_FILE_NAME, f, "image/jpeg")}).json()["study_id"]
                   for f in films]
            r = c.post(f"/api/studies/{ids[1]}/review", json={"label": "NORMAL", "note": "clear"})
            assert r.status_code == 200
            before = c.get("/api/studies", params={"status": "all", "sort": "priority"}).json()
        assert server.stop()

        server.start()
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
            after = c.get("/api/studies", params={"status": "all", "sort": "priority"}).json()
            assert after == before and after["total"] == 3
            detail = c.get(f"/api/studies/{ids[1]}").json()
            assert (detail["review_label"], detail["reviewer"], detail["review_note"]) == ("NORMAL", "dr_rest", "clear")
            for sid, film in zip(ids, films):
                assert c.get(f"/api/studies/{sid}/image").content == film
            assert c.get("/api/studies").json()["total"] == 2  # still unreviewed
    finally:
        server.stop()

    store = Store.open(db, migrate=False)
    try:
        with store.session() as s:
            audit = [(a.actor, a.method, a.route, a.status_code) for a in repository.audit_entries(s)]
    finally:
        store.dispose()
    assert audit.count(("dr_rest", "POST", "/api/vision/analyze", 200)) == 3
    assert ("dr_rest", "POST", "/api/studies/{study_id}/review", 200) in audit
    # Nothing the client sent about the patient reaches the server's log.
    assert "person4321" not in server.log()
