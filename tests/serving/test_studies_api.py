"""The worklist API over a real (tiny) model, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from conftest import jpeg_bytes, png_bytes, xray_like
from db_fixtures import database_url, make_client, tiny_predictor  # noqa: F401  (fixtures)
from PIL import Image
from sqlalchemy import select

from mediflow.store import repository
from mediflow.store.models import Study, StudyImage

PATIENT_FILE_NAME = "person1234_bacteria_5678.jpeg"


def upload(client, data: bytes, name: str = PATIENT_FILE_NAME, **kw) -> httpx.Response:
    mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return client.post("/api/vision/analyze", files={"file": (name, data, mime)}, **kw)


def films(n: int) -> list[bytes]:
    """Alternating synthetic normal / 'consolidated' films: a spread of model probabilities."""
    return [jpeg_bytes(xray_like(i % 2, seed=100 + i)) for i in range(n)]


def test_analysis_creates_a_study_without_pixels_or_file_name(make_client, database_url):
    client = make_client(database_url=database_url)
    data = jpeg_bytes(xray_like(1, seed=7))
    r = upload(client, data)
    assert r.status_code == 200, r.text
    body = r.json()
    sid = body["study_id"]
    assert body["disclaimer"] and body["prediction"] in ("NORMAL", "PNEUMONIA")

    detail = client.get(f"/api/studies/{sid}").json()
    assert detail["probabilities"] == body["probabilities"]
    assert detail["prediction"] == body["prediction"] and detail["threshold"] == body["threshold"]
    assert detail["model"] == body["model"]
    assert detail["probability"] == pytest.approx(body["probabilities"]["PNEUMONIA"])
    assert detail["uncertain"] == body["needs_review"]
    assert detail["review_state"] == "unreviewed" and detail["reviews"] == []
    assert detail["has_image"] is False and detail["source_format"] == "jpeg"
    import hashlib
    assert detail["image_sha256"] == hashlib.sha256(data).hexdigest()
    received = datetime.fromisoformat(detail["received_at"])
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=1)

    r = client.get(f"/api/studies/{sid}/image")
    assert r.status_code == 404 and "--store-images" in r.json()["detail"]
    store = client.app.state.store
    with store.session() as s:
        assert s.scalars(select(StudyImage)).all() == []
        study = s.get(Study, uuid.UUID(sid))
        values = [getattr(study, c.key) for c in Study.__table__.columns]
        assert not any(isinstance(v, str) and "person1234" in v for v in values)


def test_stored_images_come_back_byte_for_byte(make_client, database_url):
    client = make_client(database_url=database_url, store_images=True)
    data = png_bytes(xray_like(0, seed=3, size=80))
    sid = upload(client, data, name="x.png").json()["study_id"]
    r = client.get(f"/api/studies/{sid}/image")
    assert r.status_code == 200 and r.content == data and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"
    preview = client.get(f"/api/studies/{sid}/image", params={"preview": "true"})
    assert preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (80, 80)
    assert client.get(f"/api/studies/{sid}").json()["has_image"] is True


def test_worklist_sorted_by_suspicion_and_by_uncertainty(make_client, database_url):
    client = make_client(database_url=database_url)
    results = [upload(client, d).json() for d in films(5)]
    p = {r["study_id"]: r["probabilities"]["PNEUMONIA"] for r in results}
    threshold = results[0]["threshold"] if results[0]["threshold"] is not None else 0.5

    items = client.get("/api/studies", params={"sort": "priority"}).json()["items"]
    assert [i["id"] for i in items] == sorted(p, key=lambda k: -p[k])
    assert [i["probability"] for i in items] == sorted(p.values(), reverse=True)
    # A suspicious film (class 1) and a clear one (class 0) bracket the list.
    assert items[0]["probability"] > items[-1]["probability"]

    items = client.get("/api/studies", params={"sort": "uncertainty"}).json()["items"]
    assert [i["id"] for i in items] == sorted(p, key=lambda k: abs(p[k] - threshold))

    page = client.get("/api/studies", params={"sort": "priority", "limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [i["id"] for i in page["items"]] == sorted(p, key=lambda k: -p[k])[1:3]

    for bad in ({"sort": "alphabetical"}, {"status": "lost"}, {"limit": 0}, {"offset": -1}):
        r = client.get("/api/studies", params=bad)
        assert r.status_code == 422 and r.json()["detail"], bad


def test_review_records_reviewer_and_time_and_leaves_the_worklist(make_client, database_url):
    client = make_client(database_url=database_url)
    sids = [upload(client, d).json()["study_id"] for d in films(2)]
    before = datetime.now(UTC)
    prediction = client.get(f"/api/studies/{sids[0]}").json()["prediction"]
    other = "NORMAL" if prediction == "PNEUMONIA" else "PNEUMONIA"

    r = client.post(f"/api/studies/{sids[0]}/review", json={"label": other, "note": "  no consolidation "})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["review_state"], d["review_label"], d["reviewer"], d["review_note"]) == (
        "corrected", other, "anonymous", "no consolidation")
    assert before <= datetime.fromisoformat(d["reviewed_at"]) <= datetime.now(UTC)
    r = client.post(f"/api/studies/{sids[0]}/review", json={"label": prediction})
    d = r.json()
    assert d["review_state"] == "confirmed" and [x["label"] for x in d["reviews"]] == [other, prediction]

    unreviewed = client.get("/api/studies").json()
    assert [i["id"] for i in unreviewed["items"]] == [sids[1]]
    reviewed = client.get("/api/studies", params={"status": "reviewed"}).json()
    assert [i["id"] for i in reviewed["items"]] == [sids[0]]
    assert client.get("/api/studies", params={"status": "all"}).json()["total"] == 2


def test_review_and_lookup_errors_are_clear(make_client, database_url):
    client = make_client(database_url=database_url)
    sid = upload(client, films(1)[0]).json()["study_id"]
    r = client.post(f"/api/studies/{sid}/review", json={"label": "COVID"})
    assert r.status_code == 422 and "NORMAL, PNEUMONIA" in r.json()["detail"]
    r = client.post(f"/api/studies/{sid}/review", json={"note": "no label"})
    assert r.status_code == 422
    r = client.post(f"/api/studies/{sid}/review", json={"label": "NORMAL", "note": "x" * 2001})
    assert r.status_code == 422
    unknown = uuid.uuid4()
    for r in (client.get(f"/api/studies/{unknown}"), client.get(f"/api/studies/{unknown}/image"),
              client.post(f"/api/studies/{unknown}/review", json={"label": "NORMAL"})):
        assert r.status_code == 404 and r.json()["detail"] == f"no study with id {unknown}"
    r = client.get("/api/studies/not-a-uuid")
    assert r.status_code == 422 and r.json()["detail"]
    # Nothing above changed the study.
    assert client.get(f"/api/studies/{sid}").json()["reviews"] == []
    r = upload(client, b"not an image")
    assert r.status_code == 400
    assert client.get("/api/studies", params={"status": "all"}).json()["total"] == 1


def test_every_api_call_is_audited_without_content(make_client, database_url):
    client = make_client(database_url=database_url)
    sid = upload(client, films(1)[0]).json()["study_id"]
    client.get("/api/studies")
    client.post(f"/api/studies/{sid}/review", json={"label": "NORMAL", "note": "private note"})
    client.get(f"/api/studies/{uuid.uuid4()}")
    client.get("/health")
    client.get("/worklist")
    with client.app.state.store.session() as s:
        rows = repository.audit_entries(s)
    got = [(a.actor, a.method, a.route, a.status_code) for a in rows]
    assert got == [
        ("anonymous", "POST", "/api/vision/analyze", 200),
        ("anonymous", "GET", "/api/studies", 200),
        ("anonymous", "POST", "/api/studies/{study_id}/review", 200),
        ("anonymous", "GET", "/api/studies/{study_id}", 404),
    ]
    assert str(rows[0].study_id) == sid and str(rows[2].study_id) == sid


def test_without_a_store_nothing_is_kept(make_client):
    client = make_client()
    r = upload(client, films(1)[0])
    assert r.status_code == 200 and r.json()["study_id"] is None
    r = client.get("/api/studies")
    assert r.status_code == 503 and "database" in r.json()["detail"]


def test_two_concurrent_reviews_are_both_kept_and_the_later_is_current(make_client, database_url):
    app = make_client(database_url=database_url).app
    n = 4

    async def scenario() -> tuple[str, list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            r = await ac.post("/api/vision/analyze", files={"file": ("a.jpeg", films(1)[0], "image/jpeg")})
            sid = r.json()["study_id"]
            reviews = await asyncio.gather(*[
                ac.post(f"/api/studies/{sid}/review", json={"label": ("NORMAL", "PNEUMONIA")[i % 2],
                                                             "note": f"read {i}"}) for i in range(n)])
            return sid, reviews

    sid, responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * n
    store = app.state.store
    with store.session() as s:
        reviews = repository.reviews_of(s, uuid.UUID(sid))
        study = repository.get_study(s, uuid.UUID(sid))
        audit = [a for a in repository.audit_entries(s, study_id=uuid.UUID(sid)) if a.method == "POST"
                 and a.route.endswith("/review")]
    assert sorted(r.note for r in reviews) == sorted(f"read {i}" for i in range(n))
    assert len(audit) == n and {a.status_code for a in audit} == {200}
    latest = max(reviews, key=lambda r: (r.reviewed_at, r.id))
    assert study.current_review_id == latest.id and study.review_note == latest.note


# -- the study view's heatmap ----------------------------------------------------------------------

def _film_with_a_varying_map(predictor) -> bytes:
    """A synthetic film whose map is not flat, so 'same overlay' means the same picture and not two
    uniform faint squares. Which films an untrained tiny model has no evidence in depends on the
    CPU's float rounding (see test_onnx), so search a few."""
    from mediflow.data.images import decode_image

    for seed in range(11, 31):
        data = jpeg_bytes(xray_like(seed % 2, seed, 200))
        _, hmap = predictor.predict_with_map(decode_image(data, draft_size=predictor.draft_size), heatmap=True)
        if hmap.std() > 0.05:
            return data
    pytest.fail("no synthetic film gives the tiny model a heatmap that varies")


def test_heatmap_of_a_stored_study_is_the_analyze_overlay_of_its_bytes(make_client, database_url, tiny_predictor):
    client = make_client(database_url=database_url, store_images=True)
    data = _film_with_a_varying_map(tiny_predictor)
    other = png_bytes(xray_like(0, seed=3, size=80))
    sid = upload(client, data).json()["study_id"]
    other_sid = upload(client, other, name="x.png").json()["study_id"]

    r = client.get(f"/api/studies/{sid}/heatmap")
    assert r.status_code == 200, r.text
    body = r.json()
    direct = client.post("/api/vision/analyze", params={"heatmap": "true"},
                         files={"file": ("x.jpeg", data, "image/jpeg")}).json()
    assert body["heatmap"].startswith("data:image/png;base64,")
    assert body["heatmap"] == direct["heatmap"]
    assert body["heatmap_class"] == direct["heatmap_class"] == direct["prediction"]
    assert body["model"] == direct["model"]
    assert body.get("note") is None  # the model that made the finding made this map
    assert r.headers["cache-control"] == "no-store"
    # Each study gets the map of its own image.
    other_map = client.get(f"/api/studies/{other_sid}/heatmap").json()["heatmap"]
    assert other_map != body["heatmap"]
    assert other_map == client.post("/api/vision/analyze", params={"heatmap": "true"},
                                    files={"file": ("x.png", other, "image/png")}).json()["heatmap"]
    with client.app.state.store.session() as s:
        routes = [(a.route, a.status_code, str(a.study_id)) for a in repository.audit_entries(s)]
    assert ("/api/studies/{study_id}/heatmap", 200, sid) in routes


def test_heatmap_from_another_model_says_so(make_client, database_url):
    from db_fixtures import FAKE_MODEL, add_fake_study

    client = make_client(database_url=database_url, store_images=True)
    sid = add_fake_study(client.app.state.store, 0.9, image=jpeg_bytes(xray_like(1, seed=4)))
    r = client.get(f"/api/studies/{sid}/heatmap")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["heatmap"].startswith("data:image/png;base64,")
    assert body["model"] != FAKE_MODEL and body["model"]["sha256"] == client.app.state.predictor.info.sha256
    assert "model now serving" in body["note"] and "not from the model that made the stored finding" in body["note"]


def test_heatmap_errors_are_clear(make_client, database_url):
    from db_fixtures import add_fake_study

    client = make_client(database_url=database_url, store_images=True)
    unknown = uuid.uuid4()
    r = client.get(f"/api/studies/{unknown}/heatmap")
    assert r.status_code == 404 and r.json()["detail"] == f"no study with id {unknown}"
    store = client.app.state.store
    no_image = add_fake_study(store, 0.2)
    r = client.get(f"/api/studies/{no_image}/heatmap")
    assert r.status_code == 404 and "no image stored" in r.json()["detail"] and "--store-images" in r.json()["detail"]
    broken = add_fake_study(store, 0.2, image=b"\xff\xd8\xff truncated")
    r = client.get(f"/api/studies/{broken}/heatmap")
    assert r.status_code == 422 and "stored image cannot be analysed" in r.json()["detail"]
    assert client.get("/api/studies/not-a-uuid/heatmap").status_code == 422
    # A server that stores no images says so for its own studies too.
    plain = make_client(database_url=database_url)
    sid = upload(plain, films(1)[0]).json()["study_id"]
    r = plain.get(f"/api/studies/{sid}/heatmap")
    assert r.status_code == 404 and "--store-images" in r.json()["detail"]
    assert make_client().get(f"/api/studies/{sid}/heatmap").status_code == 503


def test_heatmap_needs_an_api_key_when_keys_are_set(make_client, database_url):
    key = "dr_heat-key-0123456789abcdef"
    client = make_client(database_url=database_url, store_images=True, api_keys=f"dr_heat:{key}")
    auth = {"Authorization": f"Bearer {key}"}
    sid = upload(client, films(1)[0], headers=auth).json()["study_id"]
    r = client.get(f"/api/studies/{sid}/heatmap")
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    assert client.get(f"/api/studies/{sid}/heatmap", headers={"Authorization": "Bearer wrong-key-0123456789"}
                      ).status_code == 401
    r = client.get(f"/api/studies/{sid}/heatmap", headers=auth)
    assert r.status_code == 200 and r.json()["heatmap"].startswith("data:image/png;base64,")
