"""Reading the audit log: `GET /api/audit` and `mediflow audit` (same rows; filters by time, actor and
study; paged; ids with dashes; UTC times with their zone), `mediflow keys new`, and the server's
start-up line about keys."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta, timezone

from conftest import jpeg_bytes, xray_like
from db_fixtures import database_url, make_client, tiny_predictor  # noqa: F401  (fixtures)

from mediflow.cli import main
from mediflow.serving.auth import MIN_KEY_LENGTH, parse_keys

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef0"
KEYS = f"dr_alice:{ALICE}, dr_bob:{BOB}"
UUID_WITH_DASHES = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_audit_endpoint_and_command_filter_page_and_agree(make_client, database_url, capsys):
    client = make_client(database_url=database_url, api_keys=KEYS)
    files = {"file": ("x.jpeg", jpeg_bytes(xray_like(1, seed=1)), "image/jpeg")}
    start = datetime.now(UTC) - timedelta(seconds=1)
    sid = client.post("/api/vision/analyze", files=files, headers=bearer(ALICE)).json()["study_id"]
    assert UUID_WITH_DASHES.match(sid)
    assert client.post(f"/api/studies/{sid}/review", json={"label": "NORMAL"}, headers=bearer(BOB)).status_code == 200
    assert client.get("/api/studies", headers=bearer(BOB)).status_code == 200
    assert client.get("/api/model").status_code == 401

    # A key is required (that refusal is audited too); with one, the log comes newest first.
    assert client.get("/api/audit").status_code == 401
    page = client.get("/api/audit", headers=bearer(BOB)).json()
    assert [(r["actor"], r["route"], r["status_code"]) for r in page["items"]] == [
        ("(no key)", "/api/audit", 401), ("(no key)", "/api/model", 401), ("dr_bob", "/api/studies", 200),
        ("dr_bob", "/api/studies/{study_id}/review", 200), ("dr_alice", "/api/vision/analyze", 200)]
    assert page["total"] == 5
    for row in page["items"]:
        at = datetime.fromisoformat(row["at"])
        assert at.utcoffset() == timedelta(0) and row["at"].endswith("+00:00") and at >= start
    # Filters: actor, study (with or without dashes), time; paging.
    by_alice = client.get("/api/audit", params={"actor": "dr_alice"}, headers=bearer(BOB)).json()
    assert [(r["route"], r["study_id"]) for r in by_alice["items"]] == [("/api/vision/analyze", sid)]
    for form in (sid, sid.replace("-", "")):
        got = client.get("/api/audit", params={"study": form}, headers=bearer(BOB)).json()
        assert [r["actor"] for r in got["items"]] == ["dr_bob", "dr_alice"]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/api/audit", params={"since": later}, headers=bearer(BOB)).json()["total"] == 0
    assert client.get("/api/audit", params={"until": start.isoformat()}, headers=bearer(BOB)).json()["total"] == 0
    paged = client.get("/api/audit", params={"study": sid, "limit": 1, "offset": 1}, headers=bearer(BOB)).json()
    assert paged["total"] == 2 and [r["actor"] for r in paged["items"]] == ["dr_alice"]
    bad = client.get("/api/audit", params={"study": "not-a-study"}, headers=bearer(BOB))
    assert bad.status_code == 400 and "not a study id" in bad.json()["detail"]
    bad = client.get("/api/audit", params={"since": "yesterday"}, headers=bearer(BOB))
    assert bad.status_code == 400 and "ISO 8601" in bad.json()["detail"]

    # The command prints the same rows, from the database.
    capsys.readouterr()
    assert main(["audit", "--database-url", database_url, "--study", sid, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    api = client.get("/api/audit", params={"study": sid}, headers=bearer(BOB)).json()
    assert printed == api
    assert main(["audit", "--database-url", database_url, "--actor", "dr_alice"]) == 0
    text = capsys.readouterr().out
    assert "1 audit entry match" in text and sid in text and "+00:00" in text
    assert main(["audit", "--database-url", database_url, "--since", "yesterday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_audit_endpoint_needs_keys_configured(make_client, tmp_path):
    client = make_client(database_url=f"sqlite:///{tmp_path / 's.db'}")
    r = client.get("/api/audit")
    assert r.status_code == 403 and "API keys" in r.json()["detail"]


def test_keys_new_prints_a_strong_key_and_the_line_the_server_accepts(capsys):
    assert main(["keys", "new", "dr_lee"]) == 0
    out = capsys.readouterr().out
    line = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("dr_lee:"))
    key = parse_keys(line, "test", separator="\n")["dr_lee"]
    assert len(key) >= 40 > MIN_KEY_LENGTH and key in out
    assert main(["keys", "new", "dr_lee"]) == 0
    assert key not in capsys.readouterr().out  # a new key every time
    assert main(["keys", "new", "bad/name"]) == 2
    assert "may hold only" in capsys.readouterr().err


def test_server_logs_whether_keys_are_on_and_how_many_never_the_keys(make_client, caplog):
    with caplog.at_level(logging.INFO, logger="mediflow.serve"):
        make_client(api_keys=KEYS)
        make_client()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("API keys")]
    assert lines[0].startswith("API keys on: 2 keys") and lines[1].startswith("API keys off")
    assert ALICE not in caplog.text and BOB not in caplog.text and "dr_alice" not in caplog.text


def test_audit_command_on_a_missing_database_is_a_one_line_error_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert main(["audit", "--database-url", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no study database there" in err and "\n" not in err and not missing.exists()
