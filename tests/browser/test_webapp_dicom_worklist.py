"""The Worklist view shows what finds a DICOM-received study in the PACS: films sent with dcmtk's
storescu to a real `mediflow dicom-node`, its SR delivered to a real Orthanc (one film) or waiting
while Orthanc is down (another), then the worklist of a real `mediflow serve` on the same store in
headless Chromium: accession number, modality, study date as a date and the PACS delivery state on
each row and in the study view; never the patient's name."""

from __future__ import annotations

import httpx
import pytest
from conftest import environment_missing, jpeg_bytes, xray_like
from dicom_node_process import NodeProcess, film_dataset, missing_tools, store_rows, storescu, wait_for, write
from orthanc_process import OrthancProcess, free_port
from server_process import ServerProcess
from webapp_helpers import axe_violations, open_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PATIENT = "Test^Synthetic"  # harness/dicom_factory.py names every film's patient so


def _film(tmp_path, i: int, *, accession: str, study_date: str, modality: str):
    image = tmp_path / f"film{i}.png"
    xray_like(i % 2, 900 + i, 256).save(image)
    ds = film_dataset(image, modality=modality)
    ds.AccessionNumber, ds.StudyDate = accession, study_date
    assert str(ds.PatientName) == PATIENT
    return write(ds, tmp_path / f"film{i}.dcm")


def _results(node: NodeProcess) -> list[dict]:
    return store_rows(node.database_url)["results"]


def test_worklist_shows_accession_date_modality_and_pacs_delivery(browser, tiny_model, tmp_path):
    if (missing := missing_tools()):
        environment_missing(f"this test needs {', '.join(missing)} (apt-get install -y orthanc dcmtk dicom3tools)")
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    node_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node_port, routing=None).start()
    node = NodeProcess(tmp_path, database_url, send_to=orthanc.destination, port=node_port,
                       extra=["--model", str(tiny_model), "--workers", "1"])
    server = ServerProcess(["--model", str(tiny_model), "--database-url", database_url], tmp_path / "server.log")
    try:
        node.start()
        # The first film's SR reaches Orthanc.
        sent = storescu(node.port, [_film(tmp_path, 0, accession="ACC-SENT-0001", study_date="20261207",
                                          modality="CR")])
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: [r["state"] for r in _results(node)] == ["sent"], 120, what="the first SR delivered")
        # The second one's waits: the PACS is down.
        orthanc.stop()
        waiting = storescu(node.port, [_film(tmp_path, 1, accession="ACC-WAIT-0002", study_date="20251130",
                                             modality="DX")])
        assert waiting.returncode == 0, waiting.stderr
        wait_for(lambda: any(r["state"] == "pending" and r["attempts"] >= 1 for r in _results(node)), 120,
                 what="the second SR's failed delivery")
        node.stop()

        server.start()
        # An upload through the API: a study with nothing to find in a PACS.
        upload = httpx.post(server.url + "/api/vision/analyze", timeout=60,
                            files={"file": ("upload.jpeg", jpeg_bytes(xray_like(0, 950)), "image/jpeg")})
        assert upload.status_code == 200, upload.text
        api = httpx.get(server.url + "/api/studies", params={"status": "all"}, timeout=30).json()["items"]
        by_accession = {s["accession_number"]: s for s in api}
        assert set(by_accession) == {"ACC-SENT-0001", "ACC-WAIT-0002", None}
        assert by_accession["ACC-SENT-0001"]["pacs_delivery"] == "sent"
        assert by_accession["ACC-WAIT-0002"]["pacs_delivery"] == "waiting"

        with open_page(browser) as page:
            page.goto(server.url + "/worklist")
            page.get_by_label("Show").select_option("all")
            page.wait_for_function("() => document.querySelectorAll('[data-testid=studies] tbody tr').length === 3")
            expected = {"ACC-SENT-0001": ("CR", "2026-12-07", "sent", "SR sent"),
                        "ACC-WAIT-0002": ("DX", "2025-11-30", "waiting", "SR waiting for PACS")}
            for accession, (modality, date, state, text) in expected.items():
                row = page.locator(f"tr[data-id='{by_accession[accession]['id']}']")
                assert row.get_by_test_id("accession").inner_text() == accession
                assert row.get_by_test_id("modality").inner_text() == modality
                assert row.get_by_test_id("study-date").inner_text() == date
                assert row.get_by_test_id("study-date").get_attribute("datetime") == date
                delivery = row.get_by_test_id("pacs-delivery")
                assert (delivery.inner_text(), delivery.get_attribute("data-state")) == (text, state)
            upload_row = page.locator(f"tr[data-id='{by_accession[None]['id']}']")
            assert upload_row.get_by_test_id("pacs-study").count() == 0
            assert upload_row.get_by_test_id("pacs-delivery").count() == 0

            # The study view repeats them beside the finding.
            page.locator(f"tr[data-id='{by_accession['ACC-WAIT-0002']['id']}']").click()
            facts = page.get_by_test_id("study").locator(".facts")
            facts.wait_for()
            text = facts.inner_text()
            for shown in ("ACC-WAIT-0002", "2025-11-30", "DX", "SR waiting for PACS"):
                assert shown in text, text
            assert axe_violations(page) == []
            screenshot(page, "worklist_dicom")
            # Neither the rows nor the study view name the patient.
            body = page.locator("body").inner_text()
            assert "Synthetic" not in body and "SYN0001" not in body
    finally:
        server.stop()
        node.stop()
        orthanc.stop()
