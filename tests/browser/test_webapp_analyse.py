"""The web app's Analyse view and image viewer in headless Chromium against a real `mediflow serve`:
upload (choose, keyboard, drag and drop, several files), the finding, errors, DICOM, window/level,
zoom, the heatmap overlay, layout and an axe-core scan."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, xray_like
from PIL import Image
from webapp_helpers import (
    FINDINGS,
    LAPTOP,
    TABLET,
    axe_violations,
    canvas_mean,
    canvas_pixels,
    canvas_spread,
    open_page,
    screenshot,
)

from mediflow import DISCLAIMER
from mediflow.inference.predictor import Predictor
from mediflow.serving.app import create_app
from mediflow.serving.settings import Settings

pytestmark = pytest.mark.browser

FILE_INPUT = "[data-testid=file-input]"
CARD = "[data-testid=finding-card]"


@pytest.fixture
def xray_file(tmp_path) -> Path:
    """A synthetic film with grain everywhere (a plain background would read as a border: the input
    check's `framed`, a warning for the tiny model, which does not trim borders)."""
    path = tmp_path / "child_ap_chest.jpeg"
    a = np.asarray(xray_like(1, 7, 256), dtype=np.float64) + np.random.default_rng(7).normal(0, 12, (256, 256))
    path.write_bytes(jpeg_bytes(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))))
    return path


def choose(page, *paths: Path) -> dict:
    """Select files through the app's file input; returns the API's JSON answer for the first."""
    # A generous timeout: the shared 2-core machine can take seconds per analysis under load.
    with page.expect_response("**/api/vision/analyze*", timeout=120_000) as response:
        page.set_input_files(FILE_INPUT, [str(p) for p in paths])
    return response.value.json()


def expected_finding(api: dict) -> str:
    return ("Findings suggestive of pneumonia" if api["prediction"] == "PNEUMONIA"
            else "No findings suggestive of pneumonia")


def assert_finding_and_film_shown(page) -> None:
    """The finding card appears and the viewer draws the film (heatmap off): a gradient, not one
    flat grey, and no failure message."""
    page.locator(CARD).wait_for(timeout=120_000)
    assert page.get_by_test_id("finding").inner_text() in FINDINGS
    page.get_by_label("Show heatmap").uncheck()
    assert canvas_spread(page) > 100
    assert page.get_by_test_id("viewer-failed").count() == 0

def test_upload_shows_one_consistent_finding_the_image_and_the_disclaimer(browser, live_server, xray_file):
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        assert page.get_by_test_id("disclaimer-text").inner_text() == DISCLAIMER
        api = choose(page, xray_file)
        card = page.locator(CARD)
        card.wait_for()
        finding = page.get_by_test_id("finding").inner_text()
        assert finding in FINDINGS and "diagnos" not in finding.lower()
        assert finding == expected_finding(api)
        # The card's numbers come from the response and agree with the call (the serving contract:
        # confidence is the called class's probability, the call is the class at or above 0.5).
        consistent = api["confidence"] >= 0.5 and api["probabilities"][api["prediction"]] == pytest.approx(
            api["confidence"], abs=0.0015)
        if consistent:
            shown = f"{math.floor(api['confidence'] * 1000 + 0.5) / 10:.1f}%"
            assert page.get_by_test_id("confidence-value").inner_text() == shown
            assert page.get_by_test_id("confidence-bar").get_attribute("aria-valuenow") == str(
                math.floor(api["confidence"] * 100 + 0.5))
            for name, p in api["probabilities"].items():
                assert f"{name}\n{math.floor(p * 1000 + 0.5) / 10:.1f}%" in card.inner_text()
        else:  # an older server's numbers that read as the opposite call are not shown at all
            assert page.get_by_test_id("inconsistent").is_visible()
            assert page.get_by_test_id("confidence-value").count() == 0
        assert (page.get_by_test_id("review-warning").count() == 1) is api["needs_review"]
        assert page.get_by_test_id("result-disclaimer").inner_text() == DISCLAIMER
        assert finding in page.get_by_test_id("status").text_content()  # announced in the live region
        canvas = page.get_by_test_id("viewer-canvas")
        canvas_pixels(page)  # drawn
        assert canvas.get_attribute("aria-label") == "Chest X-ray child_ap_chest.jpeg"
        assert page.get_by_test_id("error").count() == 0


def test_the_finding_component_never_shows_numbers_that_contradict_the_call(browser, live_server):
    """A response whose probabilities read as the other call (the old 0.67-shown-as-NORMAL bug) is
    shown without percentages and with a warning; a consistent one with them."""
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        page.route("**/api/vision/analyze*", lambda route: route.fulfill(json={
            "prediction": "NORMAL", "confidence": 0.33, "disclaimer": DISCLAIMER, "needs_review": True,
            "probabilities": {"NORMAL": 0.33, "PNEUMONIA": 0.67}, "threshold": 0.7,
            "model": {"architecture": "x", "version": "1", "sha256": "0" * 64}, "inference_ms": 1.0}))
        page.set_input_files(FILE_INPUT, files=[{"name": "a.jpeg", "mimeType": "image/jpeg",
                                                 "buffer": jpeg_bytes(xray_like(0, 1, 64))}])
        page.get_by_test_id("inconsistent").wait_for()
        text = page.locator(CARD).inner_text()
        assert "No findings suggestive of pneumonia" in text and "%" not in text


def test_a_text_file_shows_the_apis_error(browser, live_server, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is a referral letter, not an X-ray\n")
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        api = choose(page, notes)
        error = page.get_by_test_id("error")
        error.wait_for()
        assert error.get_attribute("role") == "alert"
        assert "notes.txt" in error.inner_text()
        assert api["detail"] in page.get_by_test_id("error-detail").inner_text()
        assert "not a JPEG, PNG, WebP, TIFF or DICOM image" in api["detail"]
        assert page.locator(CARD).count() == 0


def test_several_files_with_progress_an_error_among_them(browser, live_server, xray_file, tmp_path):
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    second = tmp_path / "second.jpeg"
    second.write_bytes(jpeg_bytes(xray_like(0, 11, 200)))
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        page.set_input_files(FILE_INPUT, [str(xray_file), str(empty), str(second)])
        files = page.get_by_role("list", name="Analysed files").get_by_role("button")
        page.wait_for_function("() => document.querySelectorAll('.file-item[data-state=done], "
                               ".file-item[data-state=error]').length === 3", timeout=60_000)
        states = files.evaluate_all("bs => bs.map(b => b.dataset.state)")
        assert sorted(states) == ["done", "done", "error"]
        # The first chosen is selected; the empty one shows the server's reason.
        files.filter(has_text="empty.jpeg").click()
        assert "empty" in page.get_by_test_id("error-detail").inner_text()
        files.filter(has_text="second.jpeg").click()
        assert page.get_by_test_id("finding").inner_text() in FINDINGS
        assert page.get_by_test_id("error").count() == 0


def test_file_chooser_is_reachable_and_operable_by_keyboard(browser, live_server, xray_file):
    with open_page(browser) as page:
        page.on("filechooser", lambda chooser: None)
        page.goto(live_server.url + "/")
        for _ in range(15):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.dataset.testid") == "choose-button":
                break
        else:
            pytest.fail("the 'Choose X-rays' button is not reachable with Tab")
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle + ' ' + "
                                "getComputedStyle(document.activeElement).outlineWidth")
        assert not outline.startswith("none") and not outline.endswith(" 0px"), f"no visible focus ({outline})"
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Enter")
        with page.expect_response("**/api/vision/analyze*"):
            chooser.value.set_files(str(xray_file))
        page.locator(CARD).wait_for(timeout=120_000)
        assert page.get_by_test_id("finding").inner_text() in FINDINGS


def test_drag_and_drop_analyses_the_dropped_files(browser, live_server):
    data = base64.b64encode(jpeg_bytes(xray_like(0, 9, 200))).decode()
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        with page.expect_response("**/api/vision/analyze*"):
            page.evaluate("""(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], "dropped.jpeg", { type: "image/jpeg" }));
                const zone = document.querySelector("[data-testid=drop-zone]");
                zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
                zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
            }""", data)
        page.locator(CARD).wait_for(timeout=120_000)
        assert page.get_by_test_id("finding").inner_text() in FINDINGS
        assert "dropped.jpeg" in page.get_by_role("list", name="Analysed files").inner_text()


def test_window_level_zoom_and_heatmap_change_the_rendered_pixels(browser, live_server, xray_file):
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        api = choose(page, xray_file)
        assert api["heatmap"].startswith("data:image/png;base64,")
        canvas = page.get_by_test_id("viewer-canvas")
        page.wait_for_function("() => document.querySelector('[data-testid=viewer-canvas]')"
                               "?.dataset.heatmap === 'shown'")
        with_map = canvas_pixels(page)

        # The heatmap: on/off and opacity, by keyboard too.
        toggle = page.get_by_label("Show heatmap")
        toggle.focus()
        page.keyboard.press("Space")
        assert not toggle.is_checked() and canvas.get_attribute("data-heatmap") == "hidden"
        plain = canvas_pixels(page)
        assert plain != with_map
        plain_mean = canvas_mean(page)
        r, g, b = plain_mean
        assert abs(r - g) < 1 and abs(g - b) < 1  # without the map the film is grey
        page.keyboard.press("Space")
        assert canvas_pixels(page) == with_map
        opacity = page.get_by_label("Heatmap opacity")
        assert opacity.get_attribute("aria-valuetext") == "45%"
        opacity.focus()
        page.keyboard.press("ArrowRight")
        assert opacity.get_attribute("aria-valuetext") == "50%"
        assert canvas_pixels(page) not in (with_map, plain)
        toggle.uncheck()

        # Window/level by preset, by mouse drag, and back by reset.
        page.get_by_label("Window preset").select_option("High contrast")
        assert canvas.get_attribute("data-window-width") == "100"
        contrast = canvas_pixels(page)
        assert contrast != plain
        page.get_by_role("button", name="Reset view").click()
        assert canvas_pixels(page) == plain
        box = canvas.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx - 60, cy + 40, steps=4)  # narrower window, higher level: a darker image
        page.mouse.up()
        assert int(canvas.get_attribute("data-window-width")) < 256
        assert int(canvas.get_attribute("data-window-level")) > 128
        assert sum(canvas_mean(page)) < sum(plain_mean)  # a higher level maps more of the film to black

        # Zoom by button and by keyboard on the focused image; pan with the arrow keys.
        page.get_by_role("button", name="Reset view").click()
        page.get_by_role("button", name="Zoom in").click()
        assert canvas.get_attribute("data-zoom") == "1.25"
        zoomed = canvas_pixels(page)
        assert zoomed != plain
        canvas.focus()
        page.keyboard.press("ArrowLeft")
        assert canvas_pixels(page) != zoomed
        page.keyboard.press("+")
        assert canvas.get_attribute("data-zoom") == "1.56"
        page.keyboard.press("0")
        assert canvas.get_attribute("data-zoom") == "1.00" and canvas_pixels(page) == plain


def test_dicom_upload_shows_the_server_decoded_image(browser, live_server, tmp_path):
    """Browsers cannot draw DICOM: the app asks for ?preview=true and draws the server's PNG."""
    from dicom_factory import dicom_bytes, gradient

    film = tmp_path / "study.dcm"
    film.write_bytes(dicom_bytes(gradient(64, 64), photometric="MONOCHROME1", bits_stored=12))
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        with page.expect_response("**/api/vision/analyze*preview=true*") as response:
            page.set_input_files(FILE_INPUT, str(film))
        api = response.value.json()
        assert response.value.status == 200 and api["preview"].startswith("data:image/png;base64,")
        # The canvas shows the server's rendering.
        assert_finding_and_film_shown(page)


@pytest.mark.parametrize("name", ["digitised-film.tif", "published-as-webp.jpg"])
def test_tiff_and_webp_uploads_are_offered_analysed_and_shown(browser, live_server, tmp_path, name):
    """The file chooser offers WebP and TIFF. Browsers cannot draw TIFF: the app asks for
    ?preview=true and draws the server's PNG of the 16-bit film; a WebP (named .jpg, as another
    hospital published it) the browser draws itself."""
    film = np.asarray(xray_like(1, 7, 256), dtype=np.uint16)
    path = tmp_path / name
    if name.endswith(".tif"):
        Image.fromarray(film * 16 + 8).save(path, format="TIFF")  # 12 significant bits in 16
    else:
        Image.fromarray(film.astype(np.uint8)).save(path, format="WEBP", lossless=True)
    with open_page(browser) as page:
        page.goto(live_server.url + "/")
        accept = page.locator(FILE_INPUT).get_attribute("accept").split(",")
        assert {"image/webp", "image/tiff", ".webp", ".tif", ".tiff"} <= set(accept)
        with page.expect_response("**/api/vision/analyze*", timeout=120_000) as response:
            page.set_input_files(FILE_INPUT, str(path))
        assert response.value.status == 200, response.value.text()
        assert ("preview=true" in response.value.url) is name.endswith(".tif")
        assert_finding_and_film_shown(page)


@pytest.mark.parametrize("viewport", [TABLET, LAPTOP], ids=["tablet-820x1180", "laptop-1366x900"])
def test_layout_fits_the_screen_and_passes_axe(browser, live_server, xray_file, viewport):
    with open_page(browser, viewport) as page:
        page.goto(live_server.url + "/")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert axe_violations(page) == []
        choose(page, xray_file)
        page.locator(CARD).wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('[data-testid=viewer-canvas]')"
                               "?.dataset.heatmap === 'shown'")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        for test_id in ("choose-button", "finding", "confidence-bar", "disclaimer", "viewer-canvas"):
            if page.get_by_test_id(test_id).count():
                box = page.get_by_test_id(test_id).bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], test_id
        assert axe_violations(page) == []


@pytest.mark.parametrize("review_below", [0.0, 1.0])
def test_review_flag_follows_needs_review(browser, thread_server, tiny_model, xray_file, review_below):
    """A server whose cut-off is 1.0 flags every image for review; one at 0.0 flags none."""
    url = thread_server(create_app(Settings(), predictor=Predictor.load(tiny_model, review_below=review_below)))
    with open_page(browser) as page:
        page.goto(url + "/")
        api = choose(page, xray_file)
        page.locator(CARD).wait_for(timeout=120_000)
        assert api["needs_review"] is (review_below == 1.0)
        warning = page.get_by_test_id("review-warning")
        assert (warning.count() == 1) is api["needs_review"]
        if api["needs_review"]:
            assert "manual review suggested" in warning.inner_text().lower()
            assert "manual review suggested" in page.get_by_test_id("status").text_content().lower()


def test_a_file_over_the_limit_is_refused_with_the_limit_named(browser, thread_server, tiny_model, xray_file):
    url = thread_server(create_app(Settings(max_upload_bytes=4096), predictor=Predictor.load(tiny_model)))
    with open_page(browser) as page:
        uploads = []
        page.on("request", lambda req: uploads.append(req.url) if "/api/vision/analyze" in req.url else None)
        page.goto(url + "/")
        assert "up to 4 KB" in page.locator("#file-rules").inner_text()
        page.set_input_files(FILE_INPUT, str(xray_file))
        page.get_by_test_id("error").wait_for()
        assert "larger than the 4 KB limit" in page.get_by_test_id("error-detail").inner_text()
        assert uploads == []  # refused in the browser; the server would answer 413 anyway


# A film of the Kermany data set (CC BY 4.0) at its original resolution: the README's first picture.
README_FILM = "PNEUMONIA/person139_virus_283.jpeg"


@pytest.mark.realdata
def test_a_real_film_read_by_the_bundled_model(browser, thread_server):
    """The bundled model as `mediflow serve` loads it, on a real full-resolution film: the finding, the
    model's version and the heatmap. With MEDIFLOW_SCREENSHOTS set this writes the README's picture."""
    from conftest import FULLRES

    film = FULLRES / README_FILM
    if not film.is_file():
        pytest.skip(f"real data not present at {FULLRES} (a user's clone has no ../shared)")
    predictor = Predictor.load(serving=True)
    url = thread_server(create_app(Settings(database_url=None, api_keys=None, api_keys_file=None), predictor=predictor))
    with open_page(browser, LAPTOP) as page:
        page.goto(url + "/")
        api = choose(page, film)
        page.locator(CARD).wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('[data-testid=viewer-canvas]')"
                               "?.dataset.heatmap === 'shown'")
        assert page.get_by_test_id("finding").inner_text() == expected_finding(api)
        card = page.locator(CARD).inner_text()
        assert predictor.info.version in card and api["model"]["version"] == predictor.info.version
        assert api["input_check"]["status"] == "ok"
        screenshot(page, "analyse")
