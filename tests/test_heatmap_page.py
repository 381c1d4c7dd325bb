"""heatmap.js in a real browser (Debian's chromium via Playwright) against a live server: the
component on a minimal harness, and on the real page (with its Content-Security-Policy)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from conftest import jpeg_bytes, xray_like


pytestmark = pytest.mark.browser

# The page's structure that heatmap.js relies on (see the comment at the top of heatmap.js).
HARNESS = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<section><div id="preview-stage" style="position: relative; width: 420px; background: #000">
  <img id="preview" alt="film" src="{src}" style="display: block; margin: 0 auto; max-width: 100%;
       max-height: 260px; object-fit: contain">
</div></section>
<script type="module" src="/static/heatmap.js"></script>
</body></html>"""

# Upload the film the way the page does and hand the result to the page's event.
ANALYZE_AND_EMIT = """async ([src, heatmap]) => {
  const blob = await (await fetch(src)).blob();
  const file = new File([blob], "film.jpeg", { type: "image/jpeg" });
  const form = new FormData();
  form.append("file", file, file.name);
  const url = "/api/vision/analyze" + (heatmap ? "?heatmap=true" : "");
  const result = await (await fetch(url, { method: "POST", body: form })).json();
  document.dispatchEvent(new CustomEvent("mediflow:result", { detail: { file, result } }));
  return result;
}"""


@pytest.fixture
def page(browser, live_server):
    pg = browser.new_page(viewport={"width": 900, "height": 700})
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(live_server.url + "/health")  # same origin for the module script and the API
    src = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(xray_like(1, 5, 300).resize((300, 220)))).decode()
    pg.set_content(HARNESS.format(src=src))
    pg.wait_for_function("document.getElementById('preview').complete && document.styleSheets.length > 0")
    pg.film_src = src
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors: {errors}"


def _box(page, selector: str) -> dict:
    return page.locator(selector).bounding_box()


def test_overlay_covers_the_image_with_opacity_control(page):
    result = page.evaluate(ANALYZE_AND_EMIT, [page.film_src, True])
    assert result["heatmap"].startswith("data:image/png;base64,")
    overlay = page.locator("#heatmap-overlay")
    overlay.wait_for()
    film, over = _box(page, "#preview"), _box(page, "#heatmap-overlay")
    assert all(abs(film[k] - over[k]) < 1.0 for k in ("x", "y", "width", "height")), (film, over)
    assert page.evaluate("document.getElementById('heatmap-overlay').naturalWidth") > 0  # the PNG decoded
    assert float(overlay.evaluate("e => getComputedStyle(e).opacity")) == pytest.approx(0.45, abs=0.01)
    page.get_by_label("Heatmap opacity").fill("80")
    assert float(overlay.evaluate("e => getComputedStyle(e).opacity")) == pytest.approx(0.8, abs=0.01)
    page.get_by_label("Show heatmap").uncheck()
    assert float(overlay.evaluate("e => getComputedStyle(e).opacity")) == 0
    page.get_by_label("Show heatmap").check()
    assert result["heatmap_class"] in page.locator("#heatmap-controls").inner_text()
    # Follows the image when the layout changes.
    page.evaluate("document.getElementById('preview').style.maxHeight = '150px'")
    page.wait_for_function("Math.abs(document.getElementById('heatmap-overlay').getBoundingClientRect().height"
                           " - document.getElementById('preview').getBoundingClientRect().height) < 1")
    # A new analysis clears the old overlay.
    page.evaluate("document.dispatchEvent(new CustomEvent('mediflow:analyzing', {detail: {}}))")
    assert page.locator("#heatmap-overlay").count() == 0 and page.locator("#heatmap-controls").count() == 0


def test_without_heatmap_a_button_asks_for_one(page):
    result = page.evaluate(ANALYZE_AND_EMIT, [page.film_src, False])
    assert result.get("heatmap") is None
    page.get_by_role("button", name="Show where the model looked").click()
    page.locator("#heatmap-overlay").wait_for()
    assert page.get_by_label("Heatmap opacity").is_visible()


def test_real_page_shows_the_overlay_after_an_upload(browser, live_server, tmp_path: Path):
    film = tmp_path / "child_ap_chest.jpeg"
    film.write_bytes(jpeg_bytes(xray_like(1, 9, 320).resize((320, 260))))
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(live_server.url + "/")
    with page.expect_response("**/api/vision/analyze?heatmap=true") as response:
        page.set_input_files("#file-input", str(film))
    body = response.value.json()
    assert body["heatmap"].startswith("data:image/png;base64,")
    page.locator("#result").wait_for(state="visible")
    overlay = page.locator("#heatmap-overlay")
    overlay.wait_for()
    # Styled by heatmap.css (a <style> element would be refused by the page's CSP) and over the film.
    assert overlay.evaluate("e => getComputedStyle(e).position") == "absolute"
    film_box, over_box = _box(page, "#preview"), _box(page, "#heatmap-overlay")
    assert all(abs(film_box[k] - over_box[k]) < 1.0 for k in ("x", "y", "width", "height")), (film_box, over_box)
    page.get_by_label("Heatmap opacity").fill("20")
    assert float(overlay.evaluate("e => getComputedStyle(e).opacity")) == pytest.approx(0.2, abs=0.01)
    page.close()
    assert not errors, f"JavaScript or CSP errors: {errors}"
