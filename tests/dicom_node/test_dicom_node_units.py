"""The DICOM node's parts without the network: what is admitted, the SR and SC it builds (checked
with dciodvfy and read back with highdicom), deterministic UIDs, and the queue's leases on SQLite
and PostgreSQL."""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from datetime import timedelta

import numpy as np
import pytest
from conftest import environment_missing, xray_like
from db_fixtures import database_url, store  # noqa: F401 (fixtures)
from dicom_factory import image_dataset, structured_report_bytes, to_bytes
from dicom_node_process import CR_STORAGE, CT_STORAGE, sr_finding
from pydicom import dcmread

from mediflow.dicom_node import admission, queue, results
from mediflow.dicom_node.sender import DicomDestination
from mediflow.store.models import DicomInstance, utcnow

MODEL = {"architecture": "efficientnet_lite0", "version": "test", "sha256": "ab" * 32}


def _film(modality="CR", view="PA", part="CHEST", sop_class=CR_STORAGE):
    ds = image_dataset(np.asarray(xray_like(1, 3, 64)), sop_class=sop_class)
    ds.Modality = modality
    for keyword, value in (("ViewPosition", view), ("BodyPartExamined", part)):
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    return ds


def _result(p=0.83, *, warning=False):
    warned = {"code": "low_contrast", "message": "The film has little contrast.", "severity": "warning"}
    reasons = [warned] if warning else []
    return {"prediction": "PNEUMONIA" if p >= 0.5 else "NORMAL", "confidence": max(p, 1 - p),
            "probabilities": {"NORMAL": 1 - p, "PNEUMONIA": p}, "needs_review": warning, "threshold": 0.5,
            "operating_point": {"positive_class": "PNEUMONIA", "calibrated_threshold": 0.39,
                                "scale": "operating-point-centred"},
            "model": MODEL, "input_check": {"status": "warning" if warning else "ok", "reasons": reasons}}


@pytest.mark.parametrize("kwargs", [{}, {"view": None}, {"part": None}, {"view": "AP"}, {"part": "THORAX"},
                                    {"part": "chest pa"},
                                    {"modality": "DX", "sop_class": "1.2.840.10008.5.1.4.1.1.1.1"}])
def test_frontal_chest_films_are_admitted(kwargs):
    assert admission.admit(_film(**kwargs)) is None


@pytest.mark.parametrize("kwargs, code", [
    ({"modality": "CT", "sop_class": CT_STORAGE}, "not_chest_radiograph"),
    ({"modality": "MG"}, "not_chest_radiograph"),
    ({"part": "SKULL"}, "not_chest_radiograph"),
    ({"part": "ABDOMEN"}, "not_chest_radiograph"),
    ({"view": "LL"}, "not_frontal_view"),
    ({"view": "LATERAL"}, "not_frontal_view"),
])
def test_other_films_are_refused_with_a_reason(kwargs, code):
    refusal = admission.admit(_film(**kwargs))
    assert refusal is not None and refusal.code == code
    assert refusal.input_check()["status"] == "rejected"


def test_non_images_dicomdir_and_own_outputs_are_refused():
    sr = dcmread(io.BytesIO(structured_report_bytes()))
    assert admission.admit(sr).code == "not_an_image"
    ddir = _film()
    ddir.SOPClassUID = admission.MEDIA_STORAGE_DIRECTORY
    assert admission.admit(ddir).code == "dicomdir"
    built = results.build_sr(_film(), _result())
    assert admission.admit(dcmread(io.BytesIO(built.data))).code == "mediflow_output"
    film = _film()
    assert admission.admit(film, {str(film.SOPInstanceUID)}).code == "mediflow_output"


def _dciodvfy_errors(data: bytes, tmp_path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        environment_missing("dciodvfy is missing (apt-get install -y dicom3tools)")
    path = tmp_path / "out.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("warning", [False, True])
def test_sr_codes_the_finding_and_passes_dciodvfy(tmp_path, warning):
    film = _film()
    film.AccessionNumber = "A123"
    built = results.build_sr(film, _result(0.83, warning=warning))
    assert _dciodvfy_errors(built.data, tmp_path) == []
    f = sr_finding(built.data)
    assert (f["pneumonia"], f["probability"], f["preliminary"]) == ("Present", 0.83, "PRELIMINARY")
    assert f["needs_review"] == ("Yes" if warning else "No")
    assert f["study_uid"] == str(film.StudyInstanceUID) and f["source_uids"] == [str(film.SOPInstanceUID)]
    ds = dcmread(io.BytesIO(built.data))
    assert ds.AccessionNumber == "A123" and ds.Manufacturer == "MediFlow"
    text = built.data.decode("latin-1")
    assert MODEL["sha256"] in text and "Clinical correlation required" in text
    assert ("little contrast" in text) is warning


def test_result_uids_are_deterministic_and_differ_by_kind_and_model():
    film = _film()
    a, b = results.build_sr(film, _result()), results.build_sr(film, _result(0.2))
    expected = results.result_uid(str(film.SOPInstanceUID), MODEL["sha256"], "sr")
    assert a.sop_instance_uid == b.sop_instance_uid == expected
    other = {**_result(), "model": {**MODEL, "sha256": "cd" * 32}}
    assert results.build_sr(film, other).sop_instance_uid != a.sop_instance_uid
    assert results.result_uid("1.2.3", "x", "sc") != results.result_uid("1.2.3", "x", "sr")


def test_secondary_capture_passes_dciodvfy(tmp_path):
    from PIL import Image

    film = _film()
    heatmap = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    built = results.build_sc(film, _result(0.3), Image.fromarray(np.asarray(xray_like(0, 1, 256))), heatmap)
    assert _dciodvfy_errors(built.data, tmp_path) == []
    ds = dcmread(io.BytesIO(built.data))
    assert ds.StudyInstanceUID == film.StudyInstanceUID and ds.BurnedInAnnotation == "YES"
    assert "PRELIMINARY" in ds.ImageComments and "Absent" in ds.ImageComments
    assert ds.pixel_array.shape[2] == 3 and ds.pixel_array.shape[1] == 256


def test_send_to_is_parsed_or_refused():
    d = DicomDestination.parse("TESTPACS@127.0.0.1:14242")
    assert (d.ae_title, d.host, d.port) == ("TESTPACS", "127.0.0.1", 14242)
    for bad in ("TESTPACS", "A@host", "A@host:0", "WAYTOOLONGAETITLE17@h:1"):
        with pytest.raises(ValueError):
            DicomDestination.parse(bad)


def _received(uid: str) -> queue.Received:
    return queue.Received("TESTPACS", uid, CR_STORAGE, "1.2.3", "A1", "20261207", "CR")


def test_a_film_is_queued_once_and_refusals_keep_no_bytes(store):  # noqa: F811
    assert queue.enqueue(store, _received("1.1"), b"bytes") is True
    assert queue.enqueue(store, _received("1.1"), b"bytes") is False  # re-sent: nothing new
    refusal = admission.Refusal("not_frontal_view", "ViewPosition LL")
    assert queue.refuse(store, _received("1.2"), b"bytes", refusal, model_sha256="0" * 64) is True
    assert queue.refuse(store, _received("1.2"), b"bytes", refusal, model_sha256="0" * 64) is False
    with store.session() as s:
        row = s.query(DicomInstance).filter_by(sop_instance_uid="1.2").one()
        assert row.state == "refused" and row.data is None
    from mediflow.store import repository

    with store.session() as s:
        total, rows = repository.list_refusals(s)
    assert total == 1 and rows[0].sop_instance_uid == "1.2" and "ViewPosition LL" in rows[0].detail


def test_claims_never_hand_one_job_to_two_workers(store):  # noqa: F811
    for i in range(20):
        queue.enqueue(store, _received(f"2.{i}"), b"x")
    claimed: dict[str, list] = {"a": [], "b": []}

    def work(name: str) -> None:
        while (job := queue.claim_instance(store, name, 60)) is not None:
            claimed[name].append(job.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = claimed["a"] + claimed["b"]
    assert len(everything) == 20 and len(set(everything)) == 20


def test_an_expired_lease_is_claimed_again_and_the_late_worker_records_nothing(store):  # noqa: F811
    queue.enqueue(store, _received("3.1"), b"x")
    first = queue.claim_instance(store, "dead", 60)
    assert queue.claim_instance(store, "other", 60) is None  # leased
    with store.session() as s:  # the dead worker's lease runs out
        s.get(DicomInstance, first.id).lease_until = utcnow() - timedelta(seconds=1)
    second = queue.claim_instance(store, "other", 60)
    assert second is not None and second.id == first.id and second.attempts == 2
    built = results.Built("sr", "1.2.840.10008.5.1.4.1.1.88.33", "9.9.9", b"sr")
    assert queue.finish_analysed(store, first, "dead", _result(), [built], positive_class="PNEUMONIA",
                                 keep_image=False) is None
    assert queue.finish_analysed(store, second, "other", _result(), [built], positive_class="PNEUMONIA",
                                 keep_image=False) is not None
    [out] = queue.claim_results(store, "sender", 60)
    assert out.sop_instance_uid == "9.9.9"
    queue.mark_failed(store, out.id, "no association", retry_in_s=3600)
    assert queue.claim_results(store, "sender", 60) == []  # waits for its backoff
    figures = queue.counts(store)
    assert figures["results"] == {"pending": 1}
    assert figures["oldest_waiting_result"]["last_error"] == "no association"


def test_a_film_that_keeps_killing_its_worker_is_set_aside(store):  # noqa: F811
    queue.enqueue(store, _received("4.1"), b"x")
    for _ in range(queue.MAX_ANALYSIS_ATTEMPTS):
        job = queue.claim_instance(store, "w", 60)
        assert job is not None
        with store.session() as s:
            s.get(DicomInstance, job.id).lease_until = utcnow() - timedelta(seconds=1)
    assert queue.claim_instance(store, "w", 60) is None
    with store.session() as s:
        row = s.query(DicomInstance).one()
        assert row.state == "failed" and row.data is None


def test_cli_refuses_a_bad_destination(capsys):
    from mediflow.cli import main

    assert main(["dicom-node", "--send-to", "nowhere", "--database-url", "sqlite:///:memory:"]) == 2
    assert "AE@HOST:PORT" in capsys.readouterr().err


def test_reception_answers_success_for_kept_and_refused_and_a_failure_for_unreadable(store):  # noqa: F811
    from mediflow.dicom_node.scp import CANNOT_UNDERSTAND, SUCCESS, Reception

    queued = []
    reception = Reception(store, model_sha256="0" * 64, on_queued=lambda: queued.append(1))
    assert reception.receive(to_bytes(_film()), "TESTPACS") == SUCCESS
    assert reception.receive(to_bytes(_film(view="LL")), "TESTPACS") == SUCCESS
    assert reception.receive(b"\0" * 10, "TESTPACS") == CANNOT_UNDERSTAND
    assert queued == [1]
    figures = queue.counts(store)
    assert figures["instances"] == {"queued": 1, "refused": 1}
