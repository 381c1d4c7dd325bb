"""No finding contradicts itself: calibrated P(PNEUMONIA) swept finely across the operating point,
through the API, the study store and worklist API, `mediflow predict` and `mediflow analyze`.

A real tiny checkpoint is given a stored threshold of 0.93 (far from 0.5, like the shipped model)
and a temperature and bias chosen so that films blended between a low- and a high-scoring one land
finely on both sides of it. Before the centred scale, every film between 0.5 and 0.93 was answered
"NORMAL" with a confidence under 0.5.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import png_bytes, xray_like
from PIL import Image

from mediflow.checkpoint import load_checkpoint, save_checkpoint
from mediflow.cli import main

THRESHOLD = 0.93
N_FILMS = 41
REVIEW_BELOW = 0.70


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.fixture(scope="module")
def sweep(tiny_model: Path, tmp_path_factory) -> dict:
    """{model, dir, files, p}: a checkpoint with threshold 0.93 and films whose calibrated
    P(PNEUMONIA) (p, computed here from the raw logits) runs from ~0.77 to ~0.98."""
    from mediflow.inference.predictor import Predictor

    work = tmp_path_factory.mktemp("sweep")
    raw = Predictor(load_checkpoint(tiny_model) | {"temperature": 1.0, "logit_bias": None})

    def d(img: Image.Image) -> float:
        z = raw.backend.run(raw.preprocess_array(img)[None])["logits"][0]
        return float(z[1] - z[0])

    candidates = [xray_like(label, seed) for label in (0, 1) for seed in range(8)]
    scores = [d(im) for im in candidates]
    lo, hi = (np.asarray(candidates[int(np.argmin(scores))], np.float64),
              np.asarray(candidates[int(np.argmax(scores))], np.float64))
    films_dir = work / "films"
    films_dir.mkdir()
    files, ds = [], []
    for i, a in enumerate(np.linspace(0, 1, N_FILMS)):
        path = films_dir / f"film_{i:02d}.png"
        path.write_bytes(png_bytes(Image.fromarray(np.round((1 - a) * lo + a * hi).astype(np.uint8))))
        files.append(path)
        ds.append(d(raw.load_image(path).image))
    ds = np.asarray(ds)
    order = np.sort(ds)
    assert order[-1] - order[0] > 0.05, "the tiny model scores every film alike: nothing to sweep"
    # Map the films' logit differences onto logit(P) in logit(0.93) +- 1.4, with the operating point
    # between the two middle films (no film within rounding distance of it).
    temperature = (order[-1] - order[0]) / 2.8
    mid = N_FILMS // 2
    c = logit(THRESHOLD) - 0.5 * (order[mid - 1] + order[mid]) / temperature
    ckpt = load_checkpoint(tiny_model)
    ckpt.update(temperature=float(temperature), logit_bias=[-c / 2, c / 2], threshold=THRESHOLD)
    model = work / "sweep.pth"
    save_checkpoint(ckpt, model)
    p = np.array([sigmoid(x / temperature + c) for x in ds])
    assert (p >= THRESHOLD).any() and (p < THRESHOLD).any()
    assert np.min(np.abs(p - THRESHOLD)) > 1e-4
    return {"model": model, "dir": films_dir, "files": files, "p": dict(zip([f.name for f in files], p))}


def assert_consistent(where: str, prediction: str, confidence: float, probabilities: dict[str, float],
                      needs_review: bool, threshold: float | None, p_calibrated: float, input_check: str) -> None:
    """One finding agrees with itself, and with the calibrated probability behind it. `input_check`:
    the input check's status shown with it (a warning also asks for review)."""
    msg = (f"{where}: {prediction} {confidence} {probabilities} review={needs_review} check={input_check} "
           f"(P {p_calibrated:.5f})")
    assert input_check in ("ok", "warning"), msg
    assert prediction == ("PNEUMONIA" if p_calibrated >= THRESHOLD else "NORMAL"), msg
    assert confidence == probabilities[prediction], msg
    assert confidence >= 0.5 and probabilities[prediction] == max(probabilities.values()), msg
    assert needs_review == (confidence < REVIEW_BELOW or input_check == "warning"), msg
    assert threshold == 0.5, msg
    assert (prediction == "PNEUMONIA") == (probabilities["PNEUMONIA"] >= threshold), msg
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=2e-4), msg
    # The reported value is the centred one: sigmoid(logit(P) - logit(t)).
    assert probabilities["PNEUMONIA"] == pytest.approx(sigmoid(logit(p_calibrated) - logit(THRESHOLD)), abs=2e-3), msg


def test_sweep_covers_both_calls_and_the_old_contradiction(sweep):
    p = np.array(list(sweep["p"].values()))
    # films that used to be answered "NORMAL, confidence < 0.5": calibrated P in (0.5, 0.93)
    assert ((p > 0.5) & (p < THRESHOLD)).sum() >= 10 and (p >= THRESHOLD).sum() >= 10
    # and the sweep is fine: neighbouring films close together around the operating point
    near = np.sort(p[np.abs(p - THRESHOLD) < 0.03])
    assert len(near) >= 6


def test_api_and_worklist_agree_with_themselves(sweep, tmp_path):
    from fastapi.testclient import TestClient

    from mediflow.inference.predictor import Predictor
    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    predictor = Predictor.load(sweep["model"])
    assert predictor.threshold == THRESHOLD
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'studies.db'}", api_keys=None, api_keys_file=None),
                     predictor=predictor)
    with TestClient(app) as client:
        ids = {}
        for f in sweep["files"]:
            r = client.post("/api/vision/analyze", files={"file": (f.name, f.read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            b = r.json()
            assert_consistent(f"API {f.name}", b["prediction"], b["confidence"], b["probabilities"],
                              b["needs_review"], b["threshold"], sweep["p"][f.name], b["input_check"]["status"])
            assert b["operating_point"] == {"positive_class": "PNEUMONIA", "calibrated_threshold": THRESHOLD,
                                            "scale": "operating-point-centred"}
            ids[b["study_id"]] = (f.name, b)
        listing = client.get("/api/studies", params={"limit": 500}).json()
        assert listing["total"] == N_FILMS
        ps = [item["probability"] for item in listing["items"]]
        assert ps == sorted(ps, reverse=True)  # most suspicious first, on the shown scale
        for item in listing["items"]:
            name, answer = ids[item["id"]]
            detail = client.get(f"/api/studies/{item['id']}").json()
            assert_consistent(f"worklist {name}", item["prediction"], item["confidence"], detail["probabilities"],
                              item["uncertain"], detail["threshold"], sweep["p"][name], item["input_check"]["status"])
            assert item["input_check"] == answer["input_check"] == detail["input_check"]
            assert item["probability"] == detail["probabilities"]["PNEUMONIA"]
            assert detail["probabilities"] == answer["probabilities"] and item["confidence"] == answer["confidence"]
            assert detail["operating_point"] == answer["operating_point"]
            assert detail["margin"] == pytest.approx(abs(item["probability"] - 0.5), abs=1e-4)


def test_cli_predict_and_analyze_agree_with_themselves(sweep, tmp_path, capsys):
    assert main(["predict", *map(str, sweep["files"]), "--model", str(sweep["model"])]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == N_FILMS
    for r in lines:
        name = Path(r["file"]).name
        assert_consistent(f"predict {name}", r["prediction"], r["confidence"], r["probabilities"],
                          r["needs_review"], r["threshold"], sweep["p"][name], r["input_check"]["status"])

    out = tmp_path / "results.csv"
    assert main(["analyze", str(sweep["dir"]), "--out", str(out), "--model", str(sweep["model"]),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == N_FILMS
    for row in rows:
        probs = {"NORMAL": float(row["p_NORMAL"]), "PNEUMONIA": float(row["p_PNEUMONIA"])}
        assert row["needs_review"] in ("True", "False") and row["error"] == ""
        assert_consistent(f"analyze {row['file']}", row["prediction"], float(row["confidence"]), probs,
                          row["needs_review"] == "True", 0.5, sweep["p"][Path(row["file"]).name], row["input_check"])


# -- studies stored before the centred scale -------------------------------------------------------
OLD_ROWS = [  # (prediction, confidence, P(PNEUMONIA), threshold) as version 0001 stored them
    ("NORMAL", 0.0683, 0.9317, 0.937),    # the example
    ("PNEUMONIA", 0.99, 0.99, 0.937),
    ("NORMAL", 0.8, 0.2, 0.937),
    ("NORMAL", 0.063, 0.937, 0.937),      # 4-decimal rounding put P on the threshold: the call stands
]


def test_old_studies_are_re_expressed_on_the_centred_scale(tmp_path):
    """Migration 0002 rewrites stored two-class findings the way a new analysis is reported."""
    import uuid

    from mediflow.store.db import Store, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    s = Store(url)
    upgrade(s.engine, "0001")
    s.dispose()
    con = sqlite3.connect(tmp_path / "old.db")
    for i, (pred, conf, p, t) in enumerate(OLD_ROWS):
        con.execute(
            "INSERT INTO studies (id, received_at, image_sha256, source_format, prediction, confidence, probabilities,"
            " threshold, model_architecture, model_version, model_sha256, needs_review, priority, margin,"
            " review_state) VALUES (?, '2025-12-01 10:00:00.000000', ?, 'jpeg', ?, ?, ?, ?, 'm', 'v', ?, ?, ?, ?,"
            " 'unreviewed')",
            (uuid.UUID(int=i + 1).hex, "a" * 64, pred, conf, json.dumps({"NORMAL": round(1 - p, 4), "PNEUMONIA": p}),
             t, "0" * 64, conf < 0.7, p, abs(p - t)))
    con.commit()
    con.close()

    store = Store.open(url)  # migrates to head
    from mediflow.store.models import Study

    with store.session() as session:
        studies = {st.id.int - 1: st for st in session.query(Study).all()}
    store.dispose()
    for i, (pred, _, _p, t) in enumerate(OLD_ROWS):
        st = studies[i]
        assert st.prediction == pred and st.threshold == 0.5 and st.calibrated_threshold == t
        assert st.confidence == st.probabilities[pred] >= 0.5
        assert (pred == "PNEUMONIA") == (st.probabilities["PNEUMONIA"] >= 0.5)
        assert st.needs_review == (st.confidence < 0.70)
        assert st.priority == st.probabilities["PNEUMONIA"]
    # by hand: odds 0.9317/0.0683 = 13.641 over 0.937/0.063 = 14.873 -> 0.9172 -> p' 0.4784
    assert studies[0].probabilities == {"NORMAL": 0.5216, "PNEUMONIA": 0.4784} and studies[0].needs_review
    # 0.99 vs 0.937: odds 99 / 14.873 = 6.656 -> 0.8694, no longer flagged by the old rule's 0.99
    assert studies[1].probabilities["PNEUMONIA"] == pytest.approx(0.8694, abs=1e-4)
    assert studies[3].probabilities == {"NORMAL": 0.5001, "PNEUMONIA": 0.4999}

    # and back: the downgrade restores the stored calibrated values
    from alembic import command

    from mediflow.store.db import _alembic_config

    s = Store(url)
    with s.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    with s.engine.connect() as conn:
        back = {row[0]: row for row in conn.exec_driver_sql("SELECT id, probabilities, threshold FROM studies")}
    s.dispose()
    for i, (_, _, p, t) in enumerate(OLD_ROWS[:3]):
        row = back[uuid.UUID(int=i + 1).hex]
        # 4 stored decimals of p' near 0 or 1 are fewer decimals of p: 1e-3 here, not 1e-4
        assert json.loads(row[1])["PNEUMONIA"] == pytest.approx(p, abs=1e-3) and row[2] == t


# -- what the doctor sees: the web app's Analyse view, worklist and study view in Chromium ----------
FINDING_WORDS = {"PNEUMONIA": "Findings suggestive of pneumonia", "NORMAL": "No findings suggestive of pneumonia"}


def js_percent(p: float) -> str:
    """frontend/src/finding.ts percent(): one decimal, half up (Math.round)."""
    return f"{math.floor(p * 1000 + 0.5) / 10:.1f}%"


def shown_percent(text: str) -> float:
    assert text.endswith("%"), text
    return float(text[:-1])


def check_card(card, where: str, expected: str, answer: dict) -> None:
    """A finding card (components/Finding.tsx): its words, confidence, per-class scores and review
    warning agree with each other and with the API's answer (`answer`: prediction, confidence,
    probabilities, needs_review)."""
    words = card.get_by_test_id("finding").inner_text()
    assert words == FINDING_WORDS[expected] == FINDING_WORDS[answer["prediction"]], (where, words, answer)
    assert card.get_by_test_id("inconsistent").count() == 0, where
    confidence_text = card.get_by_test_id("confidence-value").inner_text()
    assert confidence_text == js_percent(answer["confidence"]), (where, confidence_text, answer)
    assert card.get_by_test_id("confidence-bar").get_attribute("aria-valuetext") == confidence_text, where
    probabilities = card.get_by_test_id("probabilities")
    labels = probabilities.locator("dt").all_inner_texts()
    values = probabilities.locator("dd").all_inner_texts()
    assert len(labels) == len(values) == 2, (where, labels, values)
    assert dict(zip(labels, values)) == {k: js_percent(v) for k, v in answer["probabilities"].items()}, where
    shown = {k: shown_percent(v) for k, v in zip(labels, values)}
    confidence = shown_percent(confidence_text)
    other = next(k for k in shown if k != expected)
    assert shown[expected] == confidence >= 50.0 and shown[expected] >= shown[other], (where, shown, confidence)
    assert shown[expected] + shown[other] == pytest.approx(100.0, abs=0.11), (where, shown)
    warning = card.get_by_test_id("review-warning")
    assert (warning.count() == 1 and warning.is_visible()) == (confidence < 70.0) == answer["needs_review"], \
        (where, confidence, answer["needs_review"])


@pytest.mark.browser
def test_analyse_worklist_and_study_view_show_words_and_percentages_that_agree(browser, sweep, tmp_path):
    """The films just either side of the operating point (calibrated P about 0.92 and 0.94: before the
    centred scale the first read "No findings suggestive of pneumonia" beside PNEUMONIA 92%), through
    the React app: the Analyse view, the worklist row and the study view."""
    from server_process import ServerProcess
    from webapp_helpers import open_page

    p = sweep["p"]
    below = max((n for n in p if p[n] < THRESHOLD), key=p.get)
    above = min((n for n in p if p[n] >= THRESHOLD), key=p.get)
    expected = {below: "NORMAL", above: "PNEUMONIA"}
    server = ServerProcess(["--model", str(sweep["model"]), "--database-url", f"sqlite:///{tmp_path / 'w.db'}"],
                           tmp_path / "server.log")
    try:
        server.start()
        with open_page(browser) as page:
            page.goto(server.url + "/")
            answers = {}
            for name in (below, above):
                with page.expect_response("**/api/vision/analyze*", timeout=120_000) as response:
                    page.set_input_files("[data-testid=file-input]", str(sweep["dir"] / name))
                api = response.value.json()
                assert response.value.status == 200, api
                answers[name] = api
                # The card for this file (its meta line names the file), rendered at once from the answer.
                card = page.get_by_test_id("finding-card").filter(has_text=name)
                card.wait_for(timeout=120_000)
                check_card(card, f"Analyse {name} (P {p[name]:.4f})", expected[name], api)
            assert {answers[below]["prediction"], answers[above]["prediction"]} == {"NORMAL", "PNEUMONIA"}

            page.get_by_role("navigation", name="Views").get_by_role("link", name="Worklist").click()
            page.wait_for_function("() => document.querySelectorAll('[data-testid=studies] tbody tr').length === 2")
            by_id = {a["study_id"]: (n, a) for n, a in answers.items()}
            seen = set()
            for i in range(2):
                row = page.locator("[data-testid=studies] tbody tr").nth(i)
                study_id = row.get_attribute("data-id")
                name, api = by_id[study_id]
                seen.add(name)
                where = f"worklist {name} (P {p[name]:.4f})"
                compact = row.get_by_test_id("finding-compact")
                assert compact.get_by_test_id("compact-finding").inner_text() == FINDING_WORDS[expected[name]], where
                conf_text = compact.get_by_test_id("compact-confidence").inner_text()
                assert conf_text == js_percent(api["confidence"]), (where, conf_text)
                assert shown_percent(conf_text) >= 50.0, where
                assert (compact.get_by_test_id("compact-review").count() == 1) == (shown_percent(conf_text) < 70.0), \
                    (where, conf_text)

                row.click()
                study = page.locator(f"[data-testid=study][data-study-id='{study_id}']")
                study.wait_for(timeout=60_000)
                check_card(study.get_by_test_id("finding-card"), f"study view {name} (P {p[name]:.4f})",
                           expected[name], api)
                # the row and the study view say the same
                assert study.get_by_test_id("confidence-value").inner_text() == conf_text, where
            assert seen == {below, above}
    finally:
        server.stop()
