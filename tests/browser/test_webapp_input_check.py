"""The input check in the web app, in headless Chromium against a real `mediflow serve` with a study
store: a refused upload shows why and no finding, a warned one shows the warning beside a finding
whose review text does not call a high confidence low, and the worklist shows both."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import png_bytes, xray_like
from PIL import Image
from server_process import ServerProcess
from webapp_helpers import open_page

KEY = "browser-test-key-inputcheck-0123"
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def choose(page, path: Path) -> dict:
    with page.expect_response("**/api/vision/analyze*", timeout=120_000) as response:
        page.set_input_files("[data-testid=file-input]", [str(path)])
    r = response.value
    return {"status": r.status, **r.json()}


def test_refused_and_warned_uploads_on_the_page_and_the_worklist(browser, tiny_model, tmp_path):
    blank = tmp_path / "blank.png"
    blank.write_bytes(png_bytes(Image.new("L", (300, 300), 255)))
    small = tmp_path / "small.png"  # under the tiny model's 64 px input: low_resolution
    small.write_bytes(png_bytes(xray_like(1, 3, size=40)))
    server = ServerProcess(["--model", str(tiny_model), "--database-url", f"sqlite:///{tmp_path / 'w.db'}"],
                           tmp_path / "server.log", env={"MEDIFLOW_API_KEYS": f"dr_page:{KEY}"})
    try:
        server.start()
        with open_page(browser) as page:
            page.add_init_script(f"sessionStorage.setItem('mediflow.apiKey', '{KEY}')")
            page.goto(server.url + "/")

            refused = choose(page, blank)
            assert refused["status"] == 422 and refused["input_check"]["status"] == "rejected"
            page.get_by_test_id("error").wait_for()
            assert refused["detail"] in page.get_by_test_id("error-detail").inner_text()
            check = page.locator("[data-testid=input-check][data-status=rejected]")
            assert check.locator("li[data-code=blank_image]").count() == 1
            assert page.get_by_test_id("finding-card").count() == 0  # no finding for a refused image

            warned = choose(page, small)
            assert warned["status"] == 200 and warned["input_check"]["status"] == "warning"
            page.get_by_test_id("finding-card").wait_for()
            check = page.locator("[data-testid=input-check][data-status=warning]")
            assert check.locator("li[data-code=low_resolution]").inner_text() == \
                warned["input_check"]["reasons"][0]["message"]
            review = page.get_by_test_id("review-warning").inner_text()
            assert warned["needs_review"] and "input check" in review and "Low model confidence" not in review
            assert "input check" in page.get_by_test_id("status").text_content()

            page.goto(server.url + "/worklist")
            page.wait_for_function("() => document.querySelectorAll('[data-testid=studies] tbody tr').length === 1")
            badge = page.get_by_test_id("input-check-badge")
            assert badge.get_attribute("data-status") == "warning" and "low resolution" in badge.inner_text()
            summary = page.locator("[data-testid=refused] summary")
            assert "1 upload" in summary.inner_text()
            summary.click()
            item = page.get_by_test_id("refused-item")
            assert item.get_attribute("data-codes") == "blank_image" and refused["detail"] in item.inner_text()

            page.locator("[data-testid=studies] tbody tr").first.click()
            study = page.get_by_test_id("study")
            study.locator("[data-testid=input-check][data-status=warning]").wait_for()
    finally:
        server.stop()
