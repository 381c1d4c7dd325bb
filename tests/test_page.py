"""The doctor's web page in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import base64
import math

from pathlib import Path

import pytest

from conftest import jpeg_bytes, xray_like
from mediflow import DISCLAIMER
from mediflow.inference.predictor import Predictor
from mediflow.serving.app import create_app
from mediflow.serving.settings import Settings

FINDINGS = {"Findings suggestive of pneumonia", "No findings suggestive of pneumonia"}
LAPTOP = {"width": 1366, "height": 768}
TABLET = {"width": 820, "height": 1180}

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def xray_file(tmp_path) -> Path:
    path = tmp_path / "child_ap_chest.jpeg"
    path.write_bytes(jpeg_bytes(xray_like(1, 7, 256)))
    return path


def choose(page, path: Path) -> dict:
    """Select a file through the page's file input; returns the API's JSON answer."""
    with page.expect_response("**/api/vision/analyze*") as response:
        page.set_input_files("#file-input", str(path))
    return response.value.json()


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_upload_shows_the_finding_confidence_and_disclaimer(page, live_server, xray_file):
    page.goto(live_server.url + "/")
    assert page.locator("#disclaimer-text").inner_text() == DISCLAIMER
    assert page.locator("#disclaimer").is_visible()

    api = choose(page, xray_file)
    page.locator("#result").wait_for(state="visible")
    finding = page.locator("#finding").inner_text()
    assert finding in FINDINGS and "diagnos" not in finding.lower()
    assert finding == ("Findings suggestive of pneumonia" if api["prediction"] == "PNEUMONIA"
                       else "No findings suggestive of pneumonia")
    shown = f"{math.floor(api['confidence'] * 1000 + 0.5) / 10:.1f}%"  # JavaScript's Math.round: half up
    assert page.locator("#confidence-value").inner_text() == shown
    bar = page.locator("#confidence-bar")
    assert bar.get_attribute("aria-valuenow") == str(math.floor(api["confidence"] * 100 + 0.5))
    fill = page.evaluate("document.getElementById('confidence-fill').getBoundingClientRect().width"
                         " / document.getElementById('confidence-bar').getBoundingClientRect().width")
    assert fill == pytest.approx(api["confidence"], abs=0.02)
    assert page.locator("#review-warning").is_visible() is api["needs_review"]
    assert page.locator("#result-disclaimer").inner_text() == DISCLAIMER
    assert page.locator("#disclaimer").is_visible()  # still there next to the result
    assert page.locator("#preview").is_visible()
    assert finding in page.locator("#status").text_content()  # announced in the live region
    assert page.locator("#error").is_hidden()


def test_a_text_file_shows_the_apis_error(page, live_server, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is a referral letter, not an X-ray\n")
    page.goto(live_server.url + "/")
    api = choose(page, notes)
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert error.get_attribute("role") == "alert"
    assert "notes.txt" in page.locator("#error-title").inner_text()
    assert page.locator("#error-detail").inner_text() == api["detail"]
    assert "not a JPEG, PNG or DICOM image" in api["detail"]
    assert page.locator("#result").is_hidden()


def test_error_then_success_replaces_the_error(page, live_server, xray_file, tmp_path):
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    page.goto(live_server.url + "/")
    choose(page, empty)
    page.locator("#error").wait_for(state="visible")
    assert "empty" in page.locator("#error-detail").inner_text()
    choose(page, xray_file)
    page.locator("#result").wait_for(state="visible")
    assert page.locator("#error").is_hidden()


def test_file_chooser_is_reachable_and_operable_by_keyboard(page, live_server, xray_file):
    # Playwright turns on file-chooser interception asynchronously when a listener appears; listening
    # from the start keeps the Enter key below from racing it.
    page.on("filechooser", lambda chooser: None)
    page.goto(live_server.url + "/")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "choose-button":
            break
    else:
        pytest.fail("the 'Choose X-ray' button is not reachable with Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle + ' ' + "
                            "getComputedStyle(document.activeElement).outlineWidth")
    assert not outline.startswith("none") and not outline.endswith(" 0px"), f"no visible focus ({outline})"
    assert page.locator("#choose-button").get_attribute("aria-describedby") == "file-rules"

    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    with page.expect_response("**/api/vision/analyze*"):
        chooser.value.set_files(str(xray_file))
    page.locator("#result").wait_for(state="visible")
    assert page.locator("#finding").inner_text() in FINDINGS


def test_drag_and_drop_analyses_the_dropped_file(page, live_server):
    page.goto(live_server.url + "/")
    data = base64.b64encode(jpeg_bytes(xray_like(0, 9, 200))).decode()
    with page.expect_response("**/api/vision/analyze*"):
        page.evaluate("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.jpeg", { type: "image/jpeg" }));
            const zone = document.getElementById("drop-zone");
            zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""", data)
    page.locator("#result").wait_for(state="visible")
    assert page.locator("#finding").inner_text() in FINDINGS
    assert "dropped.jpeg" in page.locator("#file-name").inner_text()


@pytest.mark.parametrize("viewport", [TABLET, LAPTOP], ids=["tablet-820x1180", "laptop-1366x768"])
def test_layout_fits_the_screen(browser, live_server, xray_file, viewport):
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        page.goto(live_server.url + "/")
        assert no_horizontal_overflow(page)
        choose(page, xray_file)
        page.locator("#result").wait_for(state="visible")
        assert no_horizontal_overflow(page)
        for selector in ("#choose-button", "#finding", "#confidence-bar", "#disclaimer", "#preview"):
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], selector
        columns = page.evaluate("getComputedStyle(document.getElementById('main')).gridTemplateColumns.split(' ').length")
        assert columns == (1 if viewport is TABLET else 2)
    finally:
        context.close()


@pytest.mark.parametrize("review_below", [0.0, 1.0])
def test_low_confidence_warning_follows_needs_review(browser, thread_server, tiny_model, xray_file, review_below):
    """A server whose cut-off is 1.0 flags every image for review; one at 0.0 flags none."""
    app = create_app(Settings(), predictor=Predictor.load(tiny_model, review_below=review_below))
    url = thread_server(app)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    try:
        page.goto(url + "/")
        api = choose(page, xray_file)
        page.locator("#result").wait_for(state="visible")
        assert api["needs_review"] is (review_below == 1.0)
        warning = page.locator("#review-warning")
        assert warning.is_visible() is api["needs_review"]
        if api["needs_review"]:
            assert "manual review suggested" in warning.inner_text().lower()
            assert "manual review suggested" in page.locator("#status").text_content().lower()
    finally:
        context.close()


def test_a_file_over_the_limit_is_refused_with_the_limit_named(browser, thread_server, tiny_model, xray_file):
    app = create_app(Settings(max_upload_bytes=4096), predictor=Predictor.load(tiny_model))
    url = thread_server(app)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    uploads = []
    page.on("request", lambda req: uploads.append(req.url) if "/api/vision/analyze" in req.url else None)
    try:
        page.goto(url + "/")
        assert "up to 4 KB" in page.locator("#file-rules").inner_text()
        page.set_input_files("#file-input", str(xray_file))
        page.locator("#error").wait_for(state="visible")
        assert "larger than the 4 KB limit" in page.locator("#error-detail").inner_text()
        assert uploads == []  # refused in the browser; the server would answer 413 anyway
    finally:
        context.close()
