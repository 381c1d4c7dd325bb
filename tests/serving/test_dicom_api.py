"""DICOM through the API and `mediflow predict`, with the tiny trained model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from conftest import png_bytes, xray_like
from db_fixtures import make_client, tiny_predictor  # noqa: F401  (fixtures)
from dicom_factory import dicom_bytes, gradient, structured_report_bytes
from PIL import Image

from mediflow.data.images import decode_image


def post(client, data: bytes, name: str = "film.dcm", **params):
    return client.post("/api/vision/analyze", params=params, files={"file": (name, data, "application/dicom")})


def test_dicom_upload_gets_a_prediction(make_client, tiny_predictor):
    client = make_client()
    film = np.asarray(xray_like(1, 5))
    r = post(client, dicom_bytes(film))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prediction"] in tiny_predictor.class_names and "disclaimer" in body
    assert body["notes"] == [] and body["preview"] is None
    # A DICOM without a VOI window is shown min-max windowed: the same pixels, so windowed, as a PNG
    # give the same probabilities.
    lo, hi = int(film.min()), int(film.max())
    windowed = np.rint((film.astype(float) - lo) / (hi - lo) * 255).astype(np.uint8)
    as_png = client.post("/api/vision/analyze", files={"file": ("film.png", png_bytes(Image.fromarray(windowed)),
                                                                "image/png")})
    assert as_png.json()["probabilities"] == body["probabilities"]


def test_monochrome1_upload_is_inverted_before_the_model(make_client):
    client = make_client()
    film = np.asarray(xray_like(1, 5))
    mono1 = post(client, dicom_bytes(255 - film, photometric="MONOCHROME1")).json()
    mono2 = post(client, dicom_bytes(film)).json()
    assert mono1["probabilities"] == mono2["probabilities"]


def test_multiframe_note_and_preview(make_client):
    client = make_client()
    frames = np.stack([gradient(top=4095), gradient(top=4095)[:, ::-1]])
    r = post(client, dicom_bytes(frames, bits_stored=12), preview="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["notes"] == ["multi-frame DICOM: first frame of 2 analysed"]
    assert body["preview"].startswith("data:image/png;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(body["preview"].split(",", 1)[1])))
    assert shown.format == "PNG"
    expected = decode_image(dicom_bytes(frames, bits_stored=12)).image
    np.testing.assert_array_equal(np.asarray(shown.convert("RGB")), np.asarray(expected))


@pytest.mark.parametrize("data,detail", [
    (structured_report_bytes(), "DICOM has no image (SOP class Basic Text SR Storage"),
    (dicom_bytes(gradient(top=4095), bits_stored=12)[:-500], "truncated"),
])
def test_bad_dicom_is_400_with_detail(make_client, data, detail):
    r = post(make_client(), data)
    assert r.status_code == 400
    assert detail in r.json()["detail"]


def test_predict_cli_reports_dicom_notes(tmp_path, tiny_model, capsys):
    from mediflow.cli import main

    path = tmp_path / "film.dcm"
    path.write_bytes(dicom_bytes(np.stack([gradient(top=255, dtype=np.uint8)] * 3)))
    assert main(["predict", "--model", str(tiny_model), str(path)]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["file"] == str(path) and line["notes"] == ["multi-frame DICOM: first frame of 3 analysed"]
