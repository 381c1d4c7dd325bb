"""Helpers for the web app's browser tests (Debian's Chromium driven by Playwright, real servers)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AXE = REPO / "frontend" / "node_modules" / "axe-core" / "axe.min.js"
LAPTOP = {"width": 1366, "height": 900}
TABLET = {"width": 820, "height": 1180}
FINDINGS = {"Findings suggestive of pneumonia", "No findings suggestive of pneumonia"}


@contextmanager
def open_page(browser, viewport=LAPTOP):
    """A page in its own context that fails the test on any JavaScript error or console error
    (a CSP violation is reported as a console error)."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def console(msg) -> None:
        # The browser logs failed requests (e.g. an expected 401 or 404) as console errors; the
        # app shows those itself. Everything else, CSP violations included, fails the test.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            errors.append(f"console: {msg.text}")

    page.on("console", console)
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript or CSP errors on the page: {errors}"


def axe_violations(page) -> list[dict]:
    """Serious and critical axe-core violations on the page as it is now (WCAG 2 A/AA rules)."""
    if not AXE.is_file():
        pytest.skip(f"axe-core not installed at {AXE}: run `npm ci` in frontend/ (CI does)")
    # evaluate() runs through the DevTools protocol, which the page's CSP does not govern, so the
    # scanner needs no weakening of the policy that the app is tested under.
    page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {
            runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21aa", "best-practice"]}});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
    }""")
    return [v for v in result if v["impact"] in ("serious", "critical")]


def screenshot(page, name: str) -> None:
    """Saved into $MEDIFLOW_SCREENSHOTS (e.g. docs/screenshots) when set: the README's pictures."""
    folder = os.environ.get("MEDIFLOW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def canvas_pixels(page, selector: str = "[data-testid=viewer-canvas]") -> str:
    """The viewer canvas's rendered pixels (a PNG data URL), to compare before and after a change."""
    page.wait_for_function("s => document.querySelector(s)?.dataset.ready === 'true'", arg=selector)
    return page.locator(selector).evaluate("c => c.toDataURL('image/png')")


def canvas_spread(page, selector: str = "[data-testid=viewer-canvas]") -> int:
    """Brightest minus darkest red value drawn on the viewer canvas: 0 for one flat grey."""
    return page.locator(selector).evaluate("""c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0;
        for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return hi - lo; }""")


def canvas_mean(page, selector: str = "[data-testid=viewer-canvas]") -> list[float]:
    """Mean R, G, B of the viewer canvas."""
    page.wait_for_function("s => document.querySelector(s)?.dataset.ready === 'true'", arg=selector)
    return page.locator(selector).evaluate("""c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const s = [0, 0, 0];
        for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; }
        const n = d.length / 4;
        return s.map(v => v / n);
    }""")
