"""The same image uploaded again (identical bytes, same SHA-256) is linked to its first study in the
analysis response, the worklist and the study, not stored as an unrelated new study."""

from __future__ import annotations

import pytest
from conftest import jpeg_bytes, xray_like
from db_fixtures import database_url, make_client, tiny_predictor  # noqa: F401  (fixtures)


def upload(client, data: bytes) -> dict:
    r = client.post("/api/vision/analyze", files={"file": ("film.jpeg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_reuploaded_image_is_linked_to_its_first_study(make_client, database_url):
    client = make_client(database_url=database_url)
    film, other = jpeg_bytes(xray_like(1, seed=11)), jpeg_bytes(xray_like(0, seed=12))
    first = upload(client, film)
    assert first["duplicate_of"] is None
    second = upload(client, film)
    third = upload(client, film)
    different = upload(client, other)
    assert second["duplicate_of"] == first["study_id"] and third["duplicate_of"] == first["study_id"]
    assert different["duplicate_of"] is None
    assert len({first["study_id"], second["study_id"], third["study_id"]}) == 3  # every upload is kept

    items = {s["id"]: s for s in client.get("/api/studies", params={"status": "all"}).json()["items"]}
    assert items[first["study_id"]]["duplicate_of"] is None and items[first["study_id"]]["same_image_uploads"] == 3
    for repeat in (second, third):
        assert items[repeat["study_id"]]["duplicate_of"] == first["study_id"]
        assert items[repeat["study_id"]]["same_image_uploads"] == 3
    assert items[different["study_id"]]["same_image_uploads"] == 1
    detail = client.get(f"/api/studies/{third['study_id']}").json()
    assert detail["duplicate_of"] == first["study_id"] and detail["same_image_uploads"] == 3


def test_without_a_store_nothing_is_linked(make_client):
    client = make_client()
    film = jpeg_bytes(xray_like(1, seed=11))
    assert upload(client, film)["duplicate_of"] is None and upload(client, film)["duplicate_of"] is None


@pytest.mark.browser
def test_the_worklist_shows_repeats_of_an_image(browser, thread_server, tiny_predictor, tmp_path):
    import httpx
    from webapp_helpers import axe_violations, open_page

    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'w.db'}", api_keys=None, api_keys_file=None)
    url = thread_server(create_app(settings, predictor=tiny_predictor))
    film = jpeg_bytes(xray_like(1, seed=21))
    ids = [httpx.post(url + "/api/vision/analyze", files={"file": ("f.jpeg", film, "image/jpeg")},
                      timeout=60).json()["study_id"] for _ in range(2)]
    httpx.post(url + "/api/vision/analyze", files={"file": ("g.jpeg", jpeg_bytes(xray_like(0, seed=22)), "image/jpeg")},
               timeout=60)
    with open_page(browser) as page:
        page.goto(url + "/worklist")
        page.wait_for_function("() => document.querySelectorAll('[data-testid=studies] tbody tr').length === 3")
        notes = {page.locator(f"tr[data-id='{i}'] [data-testid=same-image]").inner_text().strip() for i in ids}
        assert notes == {"· uploaded 2 times", f"· repeat of {ids[0][:8]}…"}
        assert page.locator("[data-testid=same-image]").count() == 2  # the other film is not marked
        page.locator(f"tr[data-id='{ids[1]}']").click()
        page.wait_for_function("id => document.querySelector('[data-testid=study]')?.dataset.studyId === id",
                               arg=ids[1])
        facts = page.get_by_test_id("study").inner_text()
        assert f"study {ids[0][:8]}… (uploaded first)" in facts
        assert axe_violations(page) == []
