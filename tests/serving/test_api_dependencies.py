"""The API as FastAPI describes and assembles it: the OpenAPI document (bearer scheme, a typed answer
for every route), the routes' dependencies (swapped with `app.dependency_overrides`), and a server
whose model has not loaded yet (503 with a detail on every route, never a 500)."""

from __future__ import annotations

import uuid

import pytest
from conftest import jpeg_bytes, xray_like
from db_fixtures import add_fake_study, make_client, tiny_predictor  # noqa: F401  (fixtures)
from fastapi.testclient import TestClient

from mediflow.serving.app import create_app
from mediflow.serving.dependencies import current_user, get_optional_store
from mediflow.serving.settings import Settings
from mediflow.store import repository
from mediflow.store.db import Store

KEY = "dr_alice-key-0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}


def upload(client: TestClient, **kw):
    files = {"file": ("x.jpeg", jpeg_bytes(xray_like(1, seed=3)), "image/jpeg")}
    return client.post("/api/vision/analyze", files=files, **kw)


def operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]


def test_openapi_shows_the_bearer_scheme_and_a_typed_answer_for_every_route(make_client):
    client = make_client(api_keys=f"dr_alice:{KEY}")
    assert client.get("/openapi.json").status_code == 401  # it maps every route: a key is needed
    schema = client.get("/openapi.json", headers=BEARER).json()

    schemes = schema["components"]["securitySchemes"]
    assert schemes == {"APIKey": {"type": "http", "scheme": "bearer", "description": schemes["APIKey"]["description"]}}
    ops = operations(schema)
    assert {(p, m) for p, m, _ in ops} >= {
        ("/health", "get"), ("/health/live", "get"), ("/api/model", "get"), ("/api/model/evaluation", "get"),
        ("/api/vision/analyze", "post"), ("/api/studies", "get"), ("/api/studies/refused", "get"),
        ("/api/studies/{study_id}", "get"), ("/api/studies/{study_id}/image", "get"),
        ("/api/studies/{study_id}/heatmap", "get"), ("/api/studies/{study_id}/review", "post"), ("/api/audit", "get")}
    for path, method, op in ops:
        where = f"{method.upper()} {path}"
        # Every /api route needs the key; the health checks are for load balancers, which have none.
        assert (op.get("security") == [{"APIKey": []}]) == path.startswith("/api/"), where
        content = op["responses"]["200"]["content"]
        assert content, where
        for media_type, body in content.items():
            typed = body["schema"].get("$ref", "").startswith("#/components/schemas/") or \
                body["schema"] == {"type": "string", "format": "binary"}
            assert typed, (where, media_type, body["schema"])
        for code, answer in op["responses"].items():
            if code.startswith(("4", "5")) and code != "422":
                assert answer.get("content", {}).get("application/json", {}).get("schema"), (where, code)

    models = schema["components"]["schemas"]
    # Closed sets are enums, not free strings.
    assert models["HealthResponse"]["properties"]["status"]["enum"] == ["ok", "failing"]
    assert models["CheckReason"]["properties"]["severity"]["enum"] == ["rejected", "warning", "note"]
    assert models["InputCheckResult"]["properties"]["status"]["enum"] == ["ok", "warning", "rejected"]
    assert models["StudySummary"]["properties"]["review_state"]["enum"] == ["unreviewed", "confirmed", "corrected"]
    # One description of a model, wherever a finding names its model.
    for owner in ("AnalysisResponse", "StudyDetail", "StudyHeatmap"):
        assert models[owner]["properties"]["model"].get("$ref") == "#/components/schemas/ModelRef" or \
            {"$ref": "#/components/schemas/ModelRef"} in models[owner]["properties"]["model"].get("allOf", []), owner
    assert set(models["ModelRef"]["properties"]) <= set(models["ModelCard"]["properties"])


def test_every_route_answers_503_with_a_detail_before_the_model_loads(tmp_path):
    """A server whose model is still loading (TestClient without `with` runs no lifespan)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 's.db'}", store_images=True, api_keys=None,
                        api_keys_file=None)
    app = create_app(settings)
    assert app.state.predictor is None
    store: Store = app.state.store
    sid = add_fake_study(store, 0.9, image=jpeg_bytes(xray_like(1, seed=2)))
    client = TestClient(app)
    try:
        answered = []
        for path, method, _ in operations(app.openapi()):
            url = path.replace("{study_id}", str(sid))
            if (path, method) == ("/api/vision/analyze", "post"):
                r = upload(client)
            elif method == "post":
                r = client.post(url, json={"label": "NORMAL"})
            else:
                r = client.request(method, url)
            answered.append((path, r.status_code))
            if path == "/health/live":  # liveness: the process answers even while the model loads
                assert r.status_code == 200 and r.json() == {"status": "ok"}
            elif path == "/health":
                assert r.status_code == 503 and r.json()["model_loaded"] is False
                assert r.headers["retry-after"].isdigit()
            else:
                assert r.status_code == 503, (method, path, r.text)
                assert r.json() == {"detail": "model not loaded yet"}, path
                assert r.headers["retry-after"].isdigit()
        assert ("/api/studies/{study_id}/review", 503) in answered
        # Nothing was reviewed, and every refusal is in the audit log.
        with store.session() as s:
            assert repository.get_study(s, sid).review_state == "unreviewed"
            audited = [(a.route, a.status_code) for a in repository.audit_entries(s)]
        assert sorted(audited) == sorted((p, 503) for p, _ in answered if p.startswith("/api/"))
    finally:
        client.close()
        store.dispose()


def test_the_caller_is_a_dependency_the_reviews_and_the_audit_log_follow(make_client, tmp_path):
    client = make_client(database_url=f"sqlite:///{tmp_path / 's.db'}", api_keys=f"dr_alice:{KEY}")
    sid = upload(client, headers=BEARER).json()["study_id"]
    assert client.get(f"/api/studies/{sid}").status_code == 401

    # A single-sign-on front end would name the caller instead of a key: swap the dependency.
    client.app.dependency_overrides[current_user] = lambda: "dr_sso"
    r = client.post(f"/api/studies/{sid}/review", json={"label": "NORMAL"})
    assert r.status_code == 200 and r.json()["reviewer"] == "dr_sso"
    client.app.dependency_overrides.clear()
    assert client.get(f"/api/studies/{sid}").status_code == 401

    with client.app.state.store.session() as s:
        got = [(a.actor, a.route, a.status_code) for a in repository.audit_entries(s)]
    assert got == [("dr_alice", "/api/vision/analyze", 200), ("(no key)", "/api/studies/{study_id}", 401),
                   ("dr_sso", "/api/studies/{study_id}/review", 200), ("(no key)", "/api/studies/{study_id}", 401)]


def test_the_store_is_a_dependency(make_client, tmp_path):
    """Analyses and the worklist go to whichever store the dependency gives; the app's own stays empty."""
    client = make_client(database_url=f"sqlite:///{tmp_path / 'own.db'}")
    other = Store.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        client.app.dependency_overrides[get_optional_store] = lambda: other
        r = upload(client)
        assert r.status_code == 200
        sid = uuid.UUID(r.json()["study_id"])
        listed = client.get("/api/studies", params={"status": "all"}).json()
        assert [uuid.UUID(item["id"]) for item in listed["items"]] == [sid]
        with other.session() as s:
            assert repository.get_study(s, sid) is not None
        with client.app.state.store.session() as s:
            assert repository.get_study(s, sid) is None

        client.app.dependency_overrides[get_optional_store] = lambda: None
        r = client.get("/api/studies")
        assert r.status_code == 503 and "keeps no studies" in r.json()["detail"]
        assert upload(client).json()["study_id"] is None
    finally:
        other.dispose()


@pytest.mark.parametrize("body", [{"label": "NORMAL"}, {"label": "not-a-class"}])
def test_review_of_an_unknown_study_is_a_404_or_422_never_a_500(make_client, tmp_path, body):
    client = make_client(database_url=f"sqlite:///{tmp_path / 's.db'}")
    r = client.post(f"/api/studies/{uuid.uuid4()}/review", json=body)
    assert r.status_code == (404 if body["label"] == "NORMAL" else 422) and r.json()["detail"]


def test_a_caller_without_a_key_learns_nothing_about_the_routes(make_client, tmp_path):
    """No route's key check runs for an unknown path, a wrong method or a body that is not JSON:
    still a 401, audited under the route template (never the concrete path)."""
    client = make_client(database_url=f"sqlite:///{tmp_path / 's.db'}", api_keys=f"dr_alice:{KEY}")
    sid = uuid.uuid4()
    for method, path, kw in [("GET", "/api/no-such-route", {}), ("POST", "/api/model", {}),
                             ("POST", f"/api/studies/{sid}/review",
                              {"content": b"{not json", "headers": {"Content-Type": "application/json"}})]:
        r = client.request(method, path, **kw)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path)
        r = client.request(method, path, **{**kw, "headers": {**kw.get("headers", {}), **BEARER}})
        assert r.status_code in (404, 405, 422), (method, path)
    with client.app.state.store.session() as s:
        got = [(a.actor, a.route, a.status_code, a.study_id) for a in repository.audit_entries(s)]
    assert got == [("(no key)", "/api/no-such-route", 401, None), ("dr_alice", "/api/no-such-route", 404, None),
                   ("(no key)", "/api/model", 401, None), ("dr_alice", "/api/model", 405, None),
                   ("(no key)", "/api/studies/{study_id}/review", 401, sid),
                   ("dr_alice", "/api/studies/{study_id}/review", 422, sid)]
