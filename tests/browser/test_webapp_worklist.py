"""The web app's Worklist view end to end in headless Chromium against a real `mediflow serve` with a
study store and API keys: key entry, uploads, order by suspicion and uncertainty, keyboard review,
the study view with its image and heatmap, persistence across a restart, and an axe-core scan."""

from __future__ import annotations

import httpx
import pytest
from conftest import jpeg_bytes, xray_like
from server_process import ServerProcess
from webapp_helpers import axe_violations, canvas_pixels, open_page, screenshot

KEY = "browser-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def row_ids(page) -> list[str]:
    return page.eval_on_selector_all("[data-testid=studies] tbody tr", "trs => trs.map(tr => tr.dataset.id)")


def wait_rows(page, n: int) -> None:
    page.wait_for_function("n => document.querySelectorAll('[data-testid=studies] tbody tr').length === n", arg=n)


def api_order(url: str, sort: str, status: str = "unreviewed") -> list[str]:
    body = httpx.get(url + "/api/studies", params={"sort": sort, "status": status}, headers=AUTH, timeout=30).json()
    return [item["id"] for item in body["items"]]


def study(url: str, study_id: str) -> dict:
    return httpx.get(f"{url}/api/studies/{study_id}", headers=AUTH, timeout=30).json()


def status_text(record: dict) -> str:
    """The worklist's Status cell for a reviewed study: whether the reader agreed with the model."""
    if record["review_label"] == record["prediction"]:
        return "Confirmed"
    return f"Corrected \u2192 {record['review_label']}"


def test_worklist_end_to_end_with_keys_keyboard_review_and_restart(browser, tiny_model, tmp_path):
    films = []
    for i, label in enumerate((0, 1, 0)):
        f = tmp_path / f"film{i}.jpeg"
        f.write_bytes(jpeg_bytes(xray_like(label, seed=500 + i)))
        films.append(f)
    server = ServerProcess(["--model", str(tiny_model), "--database-url", f"sqlite:///{tmp_path / 'w.db'}",
                            "--store-images"], tmp_path / "server.log", env={"MEDIFLOW_API_KEYS": f"dr_page:{KEY}"})
    try:
        server.start()
        with open_page(browser) as page:
            page.goto(server.url + "/worklist")

            # Auth is on: the app asks for a key (401), a wrong one is refused, the right one kept for the tab.
            page.get_by_test_id("key-problem").wait_for()
            assert "needs an API key" in page.get_by_test_id("key-problem").inner_text()
            key_field = page.get_by_label("API key for this server (kept only in this browser tab)")
            assert key_field.evaluate("e => e === document.activeElement")
            key_field.fill("wrong-key-0123456789")
            page.get_by_role("button", name="Use key").click()
            page.wait_for_function("() => document.querySelector('[data-testid=key-problem]')?.textContent"
                                   ".includes('The API key was refused: invalid API key')")
            key_field.fill(KEY)
            page.get_by_role("button", name="Use key").click()
            page.wait_for_function("() => document.querySelector('[data-testid=count]').textContent"
                                   ".includes('No studies')")
            assert page.get_by_test_id("key-problem").count() == 0

            # Studies come from the Analyse view (a client-side route: no reload, the key stays).
            page.get_by_role("link", name="Add studies…").click()
            page.set_input_files("[data-testid=file-input]", [str(f) for f in films])
            page.wait_for_function("() => document.querySelectorAll('.file-item[data-state=done]').length === 3",
                                   timeout=120_000)
            page.get_by_role("navigation", name="Views").get_by_role("link", name="Worklist").click()
            assert page.url == server.url + "/worklist"
            wait_rows(page, 3)

            # Ordered exactly as the API's priority order (most suspicious first), then by uncertainty.
            shown = row_ids(page)
            assert shown == api_order(server.url, "priority")
            page.get_by_label("Order").select_option("uncertainty")
            page.wait_for_function("ids => Array.from(document.querySelectorAll('[data-testid=studies] tbody tr'),"
                                   " tr => tr.dataset.id).join() === ids.join()",
                                   arg=api_order(server.url, "uncertainty"))
            page.get_by_label("Order").select_option("priority")
            page.wait_for_function("ids => Array.from(document.querySelectorAll('[data-testid=studies] tbody tr'),"
                                   " tr => tr.dataset.id).join() === ids.join()", arg=shown)
            # Each row shows the finding with the same words as the Analyse view.
            first = httpx.get(f"{server.url}/api/studies/{shown[0]}", headers=AUTH).json()
            expected = ("Findings suggestive of pneumonia" if first["prediction"] == "PNEUMONIA"
                        else "No findings suggestive of pneumonia")
            assert expected in page.locator(f"tr[data-id='{shown[0]}']").inner_text()

            # J opens the most suspicious study: its stored image, finding and heatmap.
            page.locator("body").press("j")
            page.get_by_test_id("study").wait_for()
            assert page.evaluate("document.activeElement.dataset.id") == shown[0]
            assert page.get_by_test_id("study").get_attribute("data-study-id") == shown[0]
            assert page.get_by_test_id("study").get_by_test_id("finding").inner_text() == expected
            page.wait_for_function("() => document.querySelector('[data-testid=viewer-canvas]')?.dataset.heatmap"
                                   " === 'shown'", timeout=60_000)
            with_map = canvas_pixels(page)
            slider = page.get_by_label("Heatmap opacity")
            slider.focus()
            page.keyboard.press("ArrowRight")  # keyboard: one step of 5%
            assert slider.get_attribute("aria-valuetext") == "50%"
            assert canvas_pixels(page) != with_map
            assert axe_violations(page) == []
            screenshot(page, "worklist")

            page.keyboard.press("Escape")  # leave the slider; the next key goes to the worklist again
            page.keyboard.press("n")
            page.wait_for_function("() => document.querySelector('[data-testid=message]').textContent"
                                   ".includes('Recorded')")
            wait_rows(page, 2)
            assert row_ids(page) == shown[1:]
            # The key names the label, not "agree with the model": N stored NORMAL.
            first = study(server.url, shown[0])
            assert (first["review_label"], first["reviewer"]) == ("NORMAL", "dr_page")
            # The next study opens in its place, its map at the reader's opacity.
            page.wait_for_function("id => document.querySelector('[data-testid=study]')?.dataset.studyId === id",
                                   arg=shown[1])
            page.wait_for_function("() => document.querySelector('[data-testid=viewer-canvas]')?.dataset.heatmap"
                                   " === 'shown'", timeout=60_000)
            assert page.get_by_label("Heatmap opacity").get_attribute("aria-valuetext") == "50%"
            # K goes back up, Enter re-opens, C confirms the model's own call.
            page.locator("body").press("k")
            page.keyboard.press("Enter")
            page.keyboard.press("c")
            page.wait_for_function("() => document.querySelector('[data-testid=message]').textContent"
                                   ".includes('Recorded confirmation')")
            wait_rows(page, 1)
            assert study(server.url, shown[1])["review_state"] == "confirmed"
            # P stores PNEUMONIA for the last study, which opened in its place.
            page.wait_for_function("id => document.querySelector('[data-testid=study]')?.dataset.studyId === id",
                                   arg=shown[2])
            page.keyboard.press("p")
            wait_rows(page, 0)
            last = study(server.url, shown[2])
            assert (last["review_label"], last["reviewer"]) == ("PNEUMONIA", "dr_page")

            assert server.stop()
            server.start()
            page.reload()  # the key stays in sessionStorage for this tab
            page.wait_for_function("() => document.querySelector('[data-testid=count]')?.textContent"
                                   ".includes('No studies')")  # the unreviewed list loaded: all three read
            page.get_by_label("Show").select_option("all")
            wait_rows(page, 3)
            assert row_ids(page) == shown
            for record in (first, last):
                reviewed = page.locator(f"tr[data-id='{record['id']}']").inner_text()
                assert "dr_page" in reviewed and status_text(record) in reviewed, reviewed
            page.locator(f"tr[data-id='{shown[0]}']").click()
            assert "by dr_page" in page.get_by_test_id("history").inner_text()
    finally:
        server.stop()
