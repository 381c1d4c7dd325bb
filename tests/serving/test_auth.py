"""API keys, the audit trail's actors, and `mediflow serve`'s refusal to expose itself without keys."""

from __future__ import annotations

import re

import pytest
from conftest import jpeg_bytes, xray_like
from db_fixtures import make_client, tiny_predictor  # noqa: F401  (fixtures)

from mediflow.cli import main
from mediflow.errors import MediFlowError
from mediflow.serving.auth import ApiKeys, check_exposure, is_loopback, load_api_keys, parse_keys
from mediflow.store import repository

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef0"
KEYS = f"dr_alice:{ALICE}, dr_bob:{BOB}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_parse_keys_and_keys_file(tmp_path):
    assert parse_keys(KEYS, "env") == {"dr_alice": ALICE, "dr_bob": BOB}
    f = tmp_path / "keys"
    f.write_text(f"# ward 3\ndr_carol:{'c' * 20}\n\n")
    keys = load_api_keys(f"dr_alice:{ALICE}", str(f))
    assert keys.names == ["dr_alice", "dr_carol"]
    assert keys.identify("c" * 20) == "dr_carol" and keys.identify(ALICE) == "dr_alice"
    assert keys.identify("c" * 19) is None and keys.identify("") is None
    assert load_api_keys(None, None) is None


@pytest.mark.parametrize("text,message", [
    ("alice", "expected 'name:key'"),
    ("alice:short", "shorter than 16"),
    (f"al/ice:{ALICE}", "may hold only"),
    (f"a:{ALICE},a:{BOB}", "appears twice"),
    (f"a:{ALICE},b:{ALICE}", "also another name's key"),
])
def test_bad_keys_are_one_line_errors(text, message):
    with pytest.raises(MediFlowError, match=message):
        parse_keys(text, "MEDIFLOW_API_KEYS")


def test_keys_file_errors(tmp_path):
    with pytest.raises(MediFlowError, match="no such file"):
        load_api_keys(None, str(tmp_path / "absent"))
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(MediFlowError, match="holds no"):
        load_api_keys(None, str(tmp_path / "empty"))


def test_loopback_rule():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))
    check_exposure("127.0.0.1", None, insecure=False)
    check_exposure("0.0.0.0", ApiKeys({"a": ALICE}), insecure=False)
    check_exposure("0.0.0.0", None, insecure=True)
    with pytest.raises(MediFlowError, match="--insecure"):
        check_exposure("0.0.0.0", None, insecure=False)


def test_api_requires_a_key_and_reviews_record_its_name(make_client, tmp_path):
    client = make_client(database_url=f"sqlite:///{tmp_path / 's.db'}", api_keys=KEYS)
    files = {"file": ("x.jpeg", jpeg_bytes(xray_like(1, seed=1)), "image/jpeg")}

    r = client.post("/api/vision/analyze", files=files)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.get("/api/studies", headers=bearer("wrong-key-0123456789"))
    assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
    assert client.get("/api/model", headers={"Authorization": f"Basic {ALICE}"}).status_code == 401
    assert client.get("/api/model").status_code == 401
    # The page, its assets and the health check stay open.
    page = client.get("/").text
    assets = re.findall(r'(?:src|href)="(/static/assets/[^"]+)"', page)
    assert assets
    for path in ("/health", "/", "/worklist", "/model", *assets):
        assert client.get(path).status_code == 200, path

    r = client.post("/api/vision/analyze", files=files, headers=bearer(ALICE))
    assert r.status_code == 200
    sid = r.json()["study_id"]
    assert client.get("/api/model", headers=bearer(BOB)).status_code == 200
    r = client.post(f"/api/studies/{sid}/review", json={"label": "PNEUMONIA"}, headers=bearer(BOB))
    assert r.status_code == 200 and r.json()["reviewer"] == "dr_bob"
    assert r.json()["reviews"][0]["reviewer"] == "dr_bob"

    with client.app.state.store.session() as s:
        got = [(a.actor, a.route, a.status_code) for a in repository.audit_entries(s)]
    assert got == [
        ("(no key)", "/api/vision/analyze", 401),
        ("(invalid key)", "/api/studies", 401),
        ("(no key)", "/api/model", 401),
        ("(no key)", "/api/model", 401),
        ("dr_alice", "/api/vision/analyze", 200),
        ("dr_bob", "/api/model", 200),
        ("dr_bob", "/api/studies/{study_id}/review", 200),
    ]


def test_auth_works_without_a_store(make_client):
    client = make_client(api_keys=KEYS)
    assert client.get("/api/model").status_code == 401
    assert client.get("/api/model", headers=bearer(ALICE)).status_code == 200


def _serve(monkeypatch, argv: list[str]) -> list[dict]:
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.delenv("MEDIFLOW_API_KEYS", raising=False)
    monkeypatch.delenv("MEDIFLOW_API_KEYS_FILE", raising=False)
    return calls, main(["serve", *argv])


def test_serve_refuses_a_network_host_without_keys(monkeypatch, capsys, tiny_model, tmp_path):
    calls, rc = _serve(monkeypatch, ["--host", "0.0.0.0", "--model", str(tiny_model), "--no-store"])
    err = capsys.readouterr().err
    assert rc == 2 and calls == []
    assert err.count("\n") == 1 and "refusing to listen on 0.0.0.0 without API keys" in err

    calls, rc = _serve(monkeypatch, ["--host", "0.0.0.0", "--insecure", "--model", str(tiny_model), "--no-store"])
    assert rc == 0 and calls[0]["host"] == "0.0.0.0"

    keys = tmp_path / "keys"
    keys.write_text(f"dr_alice:{ALICE}\n")
    calls, rc = _serve(monkeypatch, ["--host", "0.0.0.0", "--api-keys-file", str(keys), "--model", str(tiny_model),
                                     "--database-url", f"sqlite:///{tmp_path / 's.db'}"])
    assert rc == 0 and calls[0]["host"] == "0.0.0.0" and (tmp_path / "s.db").is_file()

    calls, rc = _serve(monkeypatch, ["--api-keys-file", str(tmp_path / "absent"), "--model", str(tiny_model)])
    assert rc == 2 and "no such file" in capsys.readouterr().err
