"""End to end in headless Chromium: upload 3 studies on the worklist page, see them by suspicion,
review one with a key press, restart the server, and find everything still there."""

from __future__ import annotations


import httpx
import pytest

from conftest import jpeg_bytes, xray_like
from server_process import ServerProcess

KEY = "browser-test-key-0123456789"


def rows(page) -> list[dict]:
    return page.eval_on_selector_all("#studies tbody tr", """trs => trs.map(tr => ({
        id: tr.dataset.id, cells: Array.from(tr.cells, td => td.textContent)}))""")


def study(url: str, study_id: str) -> dict:
    return httpx.get(f"{url}/api/studies/{study_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()


def expected_status(record: dict) -> str:
    """The worklist's Status cell for a reviewed study: whether the reader agreed with the model."""
    if record["review_label"] == record["prediction"]:
        return "Confirmed"
    return f"Corrected \u2192 {record['review_label']}"


def opacity(page) -> float:
    return float(page.locator("#heatmap-overlay").evaluate("e => getComputedStyle(e).opacity"))


def check_heatmap(page, url: str, study_id: str) -> None:
    overlay = page.locator("#study-stage #heatmap-overlay")
    overlay.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#heatmap-overlay').naturalWidth > 0")  # the PNG decoded
    expected = httpx.get(f"{url}/api/studies/{study_id}/heatmap", headers={"Authorization": f"Bearer {KEY}"},
                         timeout=60).json()["heatmap"]
    assert expected.startswith("data:image/png;base64,") and overlay.get_attribute("src") == expected
    film, over = page.locator("#study-image").bounding_box(), overlay.bounding_box()
    assert all(abs(film[k] - over[k]) < 1.0 for k in ("x", "y", "width", "height")), (film, over)
    assert film["width"] > 0 and film["height"] > 0
    assert overlay.evaluate("e => getComputedStyle(e).position") == "absolute"  # heatmap.css is applied
    assert opacity(page) == pytest.approx(0.45, abs=0.01)

    slider = page.get_by_label("Heatmap opacity")
    slider.fill("80")
    assert opacity(page) == pytest.approx(0.8, abs=0.01)
    slider.focus()
    page.keyboard.press("ArrowLeft")  # keyboard: one step of 5%
    assert opacity(page) == pytest.approx(0.75, abs=0.01)
    assert slider.get_attribute("aria-valuetext") == "75%"
    toggle = page.get_by_label("Show heatmap")
    toggle.focus()
    page.keyboard.press("Space")
    assert not toggle.is_checked() and opacity(page) == 0
    page.keyboard.press("Space")
    assert toggle.is_checked() and opacity(page) == pytest.approx(0.75, abs=0.01)
    slider.focus()


@pytest.mark.browser
@pytest.mark.slow
def test_worklist_end_to_end_with_restart(browser, tiny_model, tmp_path):
    films = []
    for i, label in enumerate((0, 1, 0)):
        f = tmp_path / f"film{i}.jpeg"
        f.write_bytes(jpeg_bytes(xray_like(label, seed=500 + i)))
        films.append(f)
    server = ServerProcess(["--model", str(tiny_model), "--database-url", f"sqlite:///{tmp_path / 'w.db'}",
                            "--store-images"], tmp_path / "server.log", env={"MEDIFLOW_API_KEYS": f"dr_page:{KEY}"})
    errors: list[str] = []
    try:
        server.start()
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/worklist")

        # Auth is on: the page asks for a key, keeps it for the tab only.
        page.get_by_label("This server needs an API key").fill(KEY)
        page.get_by_role("button", name="Use key").click()
        page.wait_for_function("document.querySelector('#count').textContent.includes('No studies')")

        page.get_by_label("Chest X-rays (JPEG, PNG or DICOM)").set_input_files([str(f) for f in films])
        page.get_by_role("button", name="Analyse").click()
        page.wait_for_function("document.querySelector('#message').textContent.includes('Analysed 3 of 3')",
                               timeout=120_000)
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 3")

        # The table is ordered by suspicion, exactly as the API's priority order.
        shown = rows(page)
        probs = [float(r["cells"][2].rstrip("%")) for r in shown]
        assert probs == sorted(probs, reverse=True)
        api = httpx.get(server.url + "/api/studies", params={"sort": "priority"},
                        headers={"Authorization": f"Bearer {KEY}"}).json()
        assert [r["id"] for r in shown] == [i["id"] for i in api["items"]]

        # J opens the most suspicious study (its stored image shows); N marks it NORMAL.
        page.locator("body").press("j")
        page.wait_for_function("document.querySelector('#study-image').naturalWidth > 0")
        assert page.evaluate("document.activeElement.dataset.id") == shown[0]["id"]
        assert "Model finding" in page.locator("#finding").text_content()

        # The study view lays the heatmap over the image: the API's PNG for this study, visible,
        # covering the film, with a labelled opacity control and show/hide toggle.
        check_heatmap(page, server.url, shown[0]["id"])
        page.keyboard.press("Escape")  # leave the slider; the next key goes to the worklist again
        page.keyboard.press("n")
        page.wait_for_function("document.querySelector('#message').textContent.includes('Recorded')")
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 2")
        assert [r["id"] for r in rows(page)] == [shown[1]["id"], shown[2]["id"]]
        # The next study opens in its place, with its own map and the reader's opacity kept.
        next_map = httpx.get(f"{server.url}/api/studies/{shown[1]['id']}/heatmap",
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()["heatmap"]
        page.wait_for_function("src => document.querySelector('#heatmap-overlay')?.getAttribute('src') === src",
                               arg=next_map)
        assert page.locator("#heatmap-overlay").count() == 1
        assert opacity(page) == pytest.approx(0.75, abs=0.01)
        # The key names the label, not "agree with the model": N stored NORMAL, P stores PNEUMONIA.
        first = study(server.url, shown[0]["id"])
        assert (first["review_label"], first["reviewer"]) == ("NORMAL", "dr_page")
        page.keyboard.press("p")
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 1")
        assert [r["id"] for r in rows(page)] == [shown[2]["id"]]
        second = study(server.url, shown[1]["id"])
        assert (second["review_label"], second["reviewer"]) == ("PNEUMONIA", "dr_page")

        assert server.stop()
        server.start()
        page.reload()  # the key stays in sessionStorage for this tab
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 1")
        page.get_by_label("Show").select_option("all")
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 3")
        after = rows(page)
        assert [r["id"] for r in after] == [r["id"] for r in shown]
        for row, record in ((after[0], first), (after[1], second)):
            assert row["cells"][5] == "dr_page" and row["cells"][4] == expected_status(record)
        assert after[2]["cells"][4] == "Unreviewed"
        assert errors == []
    finally:
        server.stop()
