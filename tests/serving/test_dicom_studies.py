"""DICOM uploads become studies with their UIDs and demographics, which are never logged."""

from __future__ import annotations

import io
import logging
import uuid

import numpy as np
import pydicom
import pytest
from db_fixtures import database_url, make_client, tiny_predictor  # noqa: F401  (fixtures)
from sqlalchemy import select

from mediflow.store.models import Study

PATIENT_NAME = "Doe^Jane"


def dicom_film(study_uid: str, sop_uid: str) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = meta.MediaStorageSOPClassUID, sop_uid, study_uid
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientAge, ds.PatientSex = "DX", PATIENT_NAME, "ID77", "003Y", "M"
    yy, xx = np.mgrid[0:64, 0:64]
    arr = (800 + 2000 * (((xx - 32) / 20.0) ** 2 + ((yy - 32) / 28.0) ** 2 < 1)).astype(np.uint16)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_study_keeps_uids_and_demographics_but_logs_neither(make_client, database_url, caplog):
    client = make_client(database_url=database_url, store_images=True)
    study_uid, sop_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    data = dicom_film(study_uid, sop_uid)
    with caplog.at_level(logging.DEBUG):
        r = client.post("/api/vision/analyze", files={"file": ("Doe_Jane.dcm", data, "application/dicom")})
        assert r.status_code == 200, r.text
        sid = r.json()["study_id"]
        d = client.get(f"/api/studies/{sid}").json()
        preview = client.get(f"/api/studies/{sid}/image", params={"preview": "true"})
    assert (d["source_format"], d["study_instance_uid"], d["sop_instance_uid"]) == ("dicom", study_uid, sop_uid)
    assert (d["patient_age"], d["patient_sex"]) == ("003Y", "M")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert client.get(f"/api/studies/{sid}/image").content == data
    logged = caplog.text
    assert "003Y" not in logged and "Doe" not in logged and study_uid not in logged
    with client.app.state.store.session() as s:
        row = s.scalars(select(Study).where(Study.id == uuid.UUID(sid))).one()
        assert not any(isinstance(getattr(row, c.key), str) and "Doe" in getattr(row, c.key)
                       for c in Study.__table__.columns)
