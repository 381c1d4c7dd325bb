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
        page.keyboard.press("n")
        page.wait_for_function("document.querySelector('#message').textContent.includes('Recorded')")
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 2")
        assert [r["id"] for r in rows(page)] == [shown[1]["id"], shown[2]["id"]]

        assert server.stop()
        server.start()
        page.reload()  # the key stays in sessionStorage for this tab
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 2")
        page.get_by_label("Show").select_option("all")
        page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 3")
        after = rows(page)
        assert [r["id"] for r in after] == [r["id"] for r in shown]
        reviewed = after[0]["cells"]
        assert reviewed[5] == "dr_page" and ("Corrected" in reviewed[4] or "Confirmed" in reviewed[4])
        assert errors == []
    finally:
        server.stop()
