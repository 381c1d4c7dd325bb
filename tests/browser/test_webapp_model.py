"""GET /api/model/evaluation, and the web app's Model view in headless Chromium: the model card and
the figures of the evaluation file next to the checkpoint (a synthetic fixture, clearly labelled)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from webapp_helpers import axe_violations, open_page, screenshot

from mediflow.inference.predictor import Predictor
from mediflow.serving.app import create_app
from mediflow.serving.evaluation import checkpoint_stem, evaluation_path
from mediflow.serving.settings import Settings

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "synthetic.evaluation.json"


@pytest.fixture
def model_dir(tiny_model, tmp_path) -> Path:
    """The tiny checkpoint alone in a folder, so tests can put an evaluation file next to it."""
    shutil.copy(tiny_model, tmp_path / "lungs.pth")
    return tmp_path


def write_evaluation(model_dir: Path, predictor: Predictor, *, same_model: bool = True) -> dict:
    ev = json.loads(FIXTURE.read_text())
    assert ev["_comment"].startswith("SYNTHETIC TEST DATA")
    if same_model:
        ev["model"]["sha256"] = predictor.info.sha256
    (model_dir / "lungs.evaluation.json").write_text(json.dumps(ev))
    return ev


def test_evaluation_file_name_follows_the_checkpoint_and_its_exports():
    for name in ("m.pth", "m.onnx", "m.int8.onnx", "m.pt"):
        assert evaluation_path(Path("/x") / name) == Path("/x/m.evaluation.json")
    assert checkpoint_stem("/x/mediflow_lungs_best.int8.onnx") == Path("/x/mediflow_lungs_best")


def test_evaluation_endpoint_returns_the_file_or_a_clear_404(model_dir):
    predictor = Predictor.load(model_dir / "lungs.pth")
    with TestClient(create_app(Settings(), predictor=predictor)) as client:
        missing = client.get("/api/model/evaluation")
        assert missing.status_code == 404
        assert "lungs.evaluation.json" in missing.json()["detail"]
        ev = write_evaluation(model_dir, predictor)
        got = client.get("/api/model/evaluation")
        assert got.status_code == 200 and got.json() == ev
        (model_dir / "lungs.evaluation.json").write_text('{"model": ')  # half-written
        broken = client.get("/api/model/evaluation")
        assert broken.status_code == 503 and "not valid JSON" in broken.json()["detail"]
        (model_dir / "lungs.evaluation.json").write_text("[1, 2]")
        assert client.get("/api/model/evaluation").status_code == 503


@pytest.mark.browser
def test_model_view_shows_the_card_and_the_evaluation_figures(browser, thread_server, model_dir):
    predictor = Predictor.load(model_dir / "lungs.pth")
    card = predictor.model_card()
    url = thread_server(create_app(Settings(), predictor=predictor))
    with open_page(browser) as page:
        # No evaluation yet: the view says so, with the server's reason.
        page.goto(url + "/model")
        message = page.get_by_test_id("evaluation-message")
        message.wait_for()
        page.wait_for_function("() => document.querySelector('[data-testid=evaluation-message]')"
                               ".textContent.includes('No evaluation to show')")
        assert "lungs.evaluation.json" in message.inner_text()
        assert card["intended_use"] in page.get_by_test_id("model-card").inner_text()
        for limitation in card["limitations"]:
            assert limitation in page.get_by_test_id("model-card").inner_text()

        ev = write_evaluation(model_dir, predictor)
        page.reload()
        page.get_by_test_id("evaluation").wait_for()
        report = page.get_by_test_id("evaluation").inner_text()
        t = ev["test_dev"]
        # Plain words and the test_dev vs validation table, from the file's numbers.
        assert f"On {t['n']} held-out images" in report
        assert f"found {round(t['sensitivity'] * 100)} of every 100 films with pneumonia" in report
        split = page.get_by_test_id("split-table").inner_text()
        assert f"{ev['validation']['auc']:.3f}" in split and f"{t['auc']:.3f}" in split
        assert f"{ev['thumbnail_baseline']['test_dev_auc']:.3f}" in split
        # The figures: an ROC polyline with one point per threshold, calibration dots, the matrix.
        points = page.locator("[data-testid=roc-chart] polyline").get_attribute("points").split()
        assert len(points) == len(t["roc"]["fpr"])
        assert page.locator("[data-testid=calibration-chart] circle").count() == len(t["calibration"]["bins"])
        cells = page.locator("[data-testid=confusion-matrix] tbody td").all_inner_texts()
        assert [c.split(" ")[0] for c in cells] == [str(n) for row in t["confusion_matrix"] for n in row]
        rows = page.locator("[data-testid=invariance-table] tbody tr").all_inner_texts()
        assert [r.split("\t")[0] for r in rows] == [v["variant"] for v in ev["invariance"]]
        assert page.get_by_test_id("evaluation-mismatch").count() == 0
        assert axe_violations(page) == []
        screenshot(page, "model")

        # An evaluation of another model file is shown with a warning that it does not apply.
        write_evaluation(model_dir, predictor, same_model=False)
        page.reload()
        page.get_by_test_id("evaluation-mismatch").wait_for()
        assert "do not describe the current model" in page.get_by_test_id("evaluation-mismatch").inner_text()


@pytest.mark.browser
def test_a_calibrated_model_has_a_new_version_and_the_model_view_shows_its_operating_point(
        browser, thread_server, model_dir, tmp_path):
    """`mediflow calibrate --data SITE_DIR --site NAME`: a new version keeping its lineage (base model
    SHA-256, site, date), and the Model view shows the operating point in force with the site's
    figures next to the training ones."""
    from conftest import make_dataset

    from mediflow.checkpoint import file_sha256, load_checkpoint
    from mediflow.cli import main

    base = model_dir / "lungs.pth"
    base_version = Predictor.load(base).info.version
    site = make_dataset(tmp_path / "site", n_per_class=8) / "train"  # class folders NORMAL/ and PNEUMONIA/
    out = model_dir / "lungs_site.pth"
    assert main(["calibrate", "--model", str(base), "--data", str(site), "--site", "St Elsewhere",
                 "--min-sensitivity", "0.5", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    lineage = ckpt["calibration"]
    assert lineage["base_model_sha256"] == file_sha256(base) and lineage["site"] == "St Elsewhere"
    assert lineage["base_version"] == base_version and lineage["date"].endswith("+00:00")
    predictor = Predictor.load(out)
    assert (predictor.info.version != base_version
            and predictor.info.version.startswith(base_version + "+cal.St-Elsewhere."))
    card = predictor.model_card()
    assert card["calibration"] == lineage and card["site_calibration"]["n"] == 16
    with TestClient(create_app(Settings(), predictor=predictor)) as client:
        api = client.get("/api/model").json()
        assert api["version"] == predictor.info.version and api["calibration"] == lineage
        assert api["operating_point"]["calibrated_threshold"] == pytest.approx(ckpt["threshold"], abs=1e-6)
    # Calibrated again: the version still starts from the first base, not from the calibrated one.
    again = model_dir / "lungs_site2.pth"
    assert main(["calibrate", "--model", str(out), "--data", str(site), "--out", str(again)]) == 0
    assert load_checkpoint(again)["version"].startswith(base_version + "+cal.train.")  # the folder's name

    url = thread_server(create_app(Settings(), predictor=predictor))
    with open_page(browser) as page:
        page.goto(url + "/model")
        page.get_by_test_id("operating-point").wait_for()
        text = page.get_by_test_id("model-card").inner_text()
        assert predictor.info.version in text
        op = page.get_by_test_id("operating-point").inner_text()
        assert f"{ckpt['threshold']:.4f}" in op and "16 labelled films" in op and "St Elsewhere" in op
        assert lineage["base_model_sha256"][:16] in page.get_by_test_id("calibration-lineage").inner_text()
        table = page.get_by_test_id("metrics-table")
        headers = table.locator("thead th").all_inner_texts()
        assert headers == ["Figure", "Training validation", "Site calibration films"]
        auc_row = table.locator("tbody tr", has_text="auc").first.inner_text().split("\t")
        assert auc_row[1] == f"{ckpt['val_metrics']['auc']:.3f}"
        assert auc_row[2] == f"{ckpt['site_calibration']['metrics']['auc']:.3f}"
        # The tiny model has no input-check statistics: the view says so.
        assert "feature statistics" in page.get_by_test_id("input-check-missing").inner_text()
        assert axe_violations(page) == []
