"""Every DICOM header attribute the decoder reads, missing, malformed, of the wrong VR or unknown:
a 400 whose detail names the attribute (through the FastAPI app), or an answer with a note."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from db_fixtures import make_client, tiny_predictor  # noqa: F401  (fixtures)
from dicom_factory import gradient, image_dataset, to_bytes
from dicom_raw import TAGS, image_elements, raw_dicom, text, us
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

UNKNOWN_TS = "1.2.840.10008.1.2.8.1"  # Deflated Image Frame Compression (2024), unknown to pydicom 3.0


def post(client, data: bytes):
    return client.post("/api/vision/analyze", files={"file": ("film.dcm", data, "application/dicom")})


def raw_with(*, drop: tuple[str, ...] = (), ts: str | None = None, **changes: tuple[str, bytes]) -> bytes:
    """The valid raw image with attributes dropped or replaced by (VR, value bytes)."""
    els = image_elements()
    for kw in drop:
        del els[TAGS[kw]]
    for kw, value in changes.items():
        els[TAGS[kw]] = value
    return raw_dicom(els, **({"transfer_syntax": ts} if ts is not None else {}))


def window(center: bytes = b"128", width: bytes = b"256", **more) -> dict:
    return {"WindowCenter": ("DS", center), "WindowWidth": ("DS", width), **more}


def voi_lut(descriptor: list[int] | None, data: list[int] | None) -> bytes:
    ds = image_dataset(gradient(top=255, dtype=np.uint8))
    item = Dataset()
    if descriptor is not None:
        item.LUTDescriptor = descriptor
    if data is not None:
        item.LUTData = data
        item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    return to_bytes(ds)


def modality_lut(descriptor: list[int], data: bytes) -> bytes:
    ds = image_dataset(gradient(top=255, dtype=np.uint8))
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    item["LUTData"].VR = "OW"
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    return to_bytes(ds)


def palette(bits: int) -> bytes:
    ds = image_dataset(gradient(top=255, dtype=np.uint8), photometric="PALETTE COLOR")
    for i, _color in enumerate(("Red", "Green", "Blue")):
        ds.add_new(0x00281101 + i, "US", [256, 0, bits])
        ds.add_new(0x00281201 + i, "OW", bytes(512))
    return to_bytes(ds)


FAULTS = {
    # A former 500: a transfer syntax pydicom does not list made `is_compressed` raise.
    # pynetdicom, once imported (the DICOM node), teaches pydicom this UID's name: the refusal then
    # names the transfer syntax instead of the attribute. Either way the UID is quoted.
    "unknown transfer syntax": (raw_with(ts=UNKNOWN_TS), f"{UNKNOWN_TS}"),
    "private transfer syntax": (raw_with(ts="1.2.3.4.5"), "Transfer Syntax UID (0002,0010) 1.2.3.4.5 is not"),
    "malformed transfer syntax": (raw_with(ts="hello"), "Transfer Syntax UID (0002,0010) is not a valid UID"),
    "no rows": (raw_with(drop=("Rows",)), "lacks Rows (0028,0010)"),
    "no columns": (raw_with(drop=("Columns",)), "lacks Columns (0028,0011)"),
    "no photometric": (raw_with(drop=("PhotometricInterpretation",)), "lacks Photometric Interpretation (0028,0004)"),
    "rows as text": (raw_with(Rows=("IS", b"abc")), "Rows (0028,0010) is not a number"),
    "rows twice": (raw_with(Rows=("US", us(16, 16))), "Rows (0028,0010) has 2 values"),
    "rows zero": (raw_with(Rows=("US", us(0))), "no pixels"),
    "unknown photometric": (raw_with(PhotometricInterpretation=("CS", text("HSV"))),
                            "Photometric Interpretation (0028,0004) is not one this decoder supports"),
    "photometric as bytes": (raw_with(PhotometricInterpretation=("OB", b"\xff\xfe")),
                             "Photometric Interpretation (0028,0004) holds bytes"),
    "no bits allocated": (raw_with(drop=("BitsAllocated",)), "lacks Bits Allocated (0028,0100)"),
    "bits allocated 13": (raw_with(BitsAllocated=("US", us(13))), "Bits Allocated (0028,0100) is 13"),
    "bits allocated as text": (raw_with(BitsAllocated=("LO", text("eight"))),
                               "Bits Allocated (0028,0100) is not a number"),
    "bits allocated 8.5": (raw_with(BitsAllocated=("DS", b"8.5")), "Bits Allocated (0028,0100) is not a whole number"),
    "no bits stored": (raw_with(drop=("BitsStored",)), "lacks Bits Stored (0028,0101)"),
    "bits stored above allocated": (raw_with(BitsStored=("US", us(12))), "Bits Stored (0028,0101) is 12"),
    "high bit elsewhere": (raw_with(HighBit=("US", us(15))), "High Bit (0028,0102) is 15"),
    "high bit as text": (raw_with(HighBit=("LO", text("top"))), "High Bit (0028,0102) is not a number"),
    "no pixel representation": (raw_with(drop=("PixelRepresentation",)), "lacks Pixel Representation (0028,0103)"),
    "pixel representation 5": (raw_with(PixelRepresentation=("US", us(5))), "Pixel Representation (0028,0103) is 5"),
    "no samples per pixel": (raw_with(drop=("SamplesPerPixel",)), "lacks Samples per Pixel (0028,0002)"),
    "samples per pixel 4": (raw_with(SamplesPerPixel=("US", us(4))), "Samples per Pixel (0028,0002) is 4"),
    "rgb with one sample": (raw_with(PhotometricInterpretation=("CS", text("RGB"))),
                            "Samples per Pixel (0028,0002) is 1, but RGB"),
    "rgb without planar configuration": (raw_with(PhotometricInterpretation=("CS", text("RGB")),
                                                  SamplesPerPixel=("US", us(3))),
                                         "lacks Planar Configuration (0028,0006)"),
    "planar configuration 7": (raw_with(PhotometricInterpretation=("CS", text("RGB")), SamplesPerPixel=("US", us(3)),
                                        PlanarConfiguration=("US", us(7))), "Planar Configuration (0028,0006) is 7"),
    "frames as text": (raw_with(NumberOfFrames=("IS", b"two")), "Number of Frames (0028,0008) is not a number"),
    "frames negative": (raw_with(NumberOfFrames=("IS", b"-1")), "Number of Frames (0028,0008) is -1"),
    "more frames than data": (raw_with(NumberOfFrames=("IS", b"1000000")), "Pixel Data (7FE0,0010) holds 256 bytes"),
    "pixel data short": (raw_with(PixelData=("OB", bytes(100))), "Pixel Data (7FE0,0010) holds 100 bytes"),
    "pixel data empty": (raw_with(PixelData=("OB", b"")), "Pixel Data (7FE0,0010) is empty"),
    "window centre as text": (raw_with(**window(center=b"abc")), "Window Center (0028,1050) is not a number"),
    "window width zero": (raw_with(**window(width=b"0")), "Window Width (0028,1051) is 0"),
    "window width infinite": (raw_with(**window(width=b"1e999")), "Window Width (0028,1051) is not a finite number"),
    "unknown voi function": (raw_with(**window(VOILUTFunction=("CS", text("CUBIC")))),
                             "VOI LUT Function (0028,1056) is not one of"),
    "rescale slope as text": (raw_with(RescaleSlope=("DS", b"x"), RescaleIntercept=("DS", b"0")),
                              "Rescale Slope (0028,1053) is not a number"),
    "rescale slope zero": (raw_with(RescaleSlope=("DS", b"0"), RescaleIntercept=("DS", b"0")),
                           "Rescale Slope (0028,1053) is 0"),
    "rescale intercept nan": (raw_with(RescaleSlope=("DS", b"1"), RescaleIntercept=("DS", b"nan")),
                              "Rescale Intercept (0028,1052) is not a finite number"),
    "voi lut without descriptor": (voi_lut(None, list(range(256))),
                                   "VOI LUT Sequence (0028,3010) item lacks LUT Descriptor"),
    "voi lut without data": (voi_lut([256, 0, 8], None), "VOI LUT Sequence (0028,3010) item lacks LUT Data"),
    "voi lut descriptor of one value": (voi_lut([256], list(range(256))),
                                        "LUT Descriptor (0028,3002) does not have 3 values"),
    "voi lut 0 bits": (voi_lut([256, 0, 0], list(range(256))), "LUT Descriptor (0028,3002) gives 0 bits per entry"),
    "voi lut shorter than declared": (voi_lut([256, 0, 8], list(range(10))), "LUT Data (0028,3006) holds 10 entries"),
    "modality lut 12 bits": (modality_lut([256, 0, 12], bytes(512)), "Modality LUT Sequence (0028,3000) item LUT "
                                                                    "Descriptor (0028,3002) gives 12 bits"),
    "modality lut short data": (modality_lut([256, 0, 16], bytes(20)), "LUT Data (0028,3006) holds 10 entries"),
    "palette 0 bits": (palette(0), "Red Palette Color Lookup Table Descriptor (0028,1101) gives 0 bits"),
    "palette without tables": (to_bytes(image_dataset(gradient(top=255, dtype=np.uint8), photometric="PALETTE COLOR")),
                               "lacks Red Palette Color Lookup Table Descriptor (0028,1101)"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_header_fault_is_400_naming_the_attribute(make_client, fault, caplog):
    data, detail = FAULTS[fault]
    with caplog.at_level(logging.INFO, logger="mediflow.serve"):
        r = post(make_client(), data)
    assert r.status_code == 400, r.text
    body = r.json()["detail"]
    assert detail in body
    assert body.startswith("upload: DICOM ") and "\n" not in body and "Traceback" not in body
    # The server logs the refusal once, as one line without the file's values.
    refused = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("refused upload")]
    assert len(refused) == 1 and refused[0].startswith("refused upload: dicom, ImageDecodeError: DICOM ")


@pytest.mark.parametrize("changes,note", [
    ({"NumberOfFrames": ("IS", b"0")}, "Number of Frames (0028,0008) is 0; read as 1"),
    ({"WindowCenter": ("DS", b"128")}, "Window Center (0028,1050) without its pair ignored"),
    ({"WindowWidth": ("DS", b"256")}, "Window Width (0028,1051) without its pair ignored"),
])
def test_tolerable_faults_get_an_answer_with_a_note(make_client, changes, note):
    r = post(make_client(), raw_with(**changes))
    assert r.status_code == 200, r.text
    assert any(note in n for n in r.json()["notes"])


def test_clean_values_in_a_wrong_vr_are_read(make_client):
    """Rows as IS text and Bits Allocated as a DS: the numbers are right, so the image decodes."""
    r = post(make_client(), raw_with(Rows=("IS", b"16"), BitsAllocated=("DS", b"8.0")))
    assert r.status_code == 200, r.text


def test_log_reason_quotes_nothing_from_the_file(make_client, caplog):
    with caplog.at_level(logging.INFO, logger="mediflow.serve"):
        r = post(make_client(), raw_with(Rows=("IS", b"Jane^Doe")))
    assert r.status_code == 400 and "Jane^Doe" in r.json()["detail"]  # the uploader sees their own value
    assert "refused upload" in caplog.text and "Jane^Doe" not in caplog.text


@pytest.mark.parametrize("body,content_type,status", [
    (b"--xx\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", "multipart/form-data; boundary=xx", 400),
    (b"garbage", "multipart/form-data; boundary=xx", 400),
    (b"", "multipart/form-data", 400),
    (b"\xff" * 100, "multipart/form-data; boundary=\xff", 400),
    (b"--xx--\r\n", "multipart/form-data; boundary=xx", 422),
    (b"abc", "text/plain", 422),
], ids=["no-closing-boundary", "garbage", "no-boundary", "latin-1-boundary", "no-file-field", "not-multipart"])
def test_malformed_multipart_is_4xx(make_client, body, content_type, status, caplog):
    with caplog.at_level(logging.INFO, logger="mediflow.serve"):
        r = make_client().post("/api/vision/analyze", content=body,
                               headers={"content-type": content_type.encode("latin-1")})
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert sum(rec.getMessage().startswith("refused upload") for rec in caplog.records) == 1


def test_analyze_cli_keeps_going_over_every_refused_kind(tmp_path, tiny_model):
    """`mediflow analyze` on good films mixed with every fault above and the non-DICOM refusals: one
    error row per bad file, a summary counting them, exit 0, and no traceback on the terminal."""
    import csv
    import os
    import subprocess
    import sys

    from conftest import REPO, jpeg_bytes, png_bytes, xray_like

    root = tmp_path / "films"
    root.mkdir()
    good = {"a.jpeg": jpeg_bytes(xray_like(0, 1)), "b.png": png_bytes(xray_like(1, 2)),
            "c.dcm": raw_with(), "d.dcm": raw_with(NumberOfFrames=("IS", b"0"))}
    bad = {f"fault-{i:02d}.dcm": data for i, (data, _) in enumerate(FAULTS.values())}
    bad.update({"truncated.jpeg": jpeg_bytes(xray_like(0, 3))[:300], "truncated.png": png_bytes(xray_like(0, 4))[:80],
                "empty.png": b"", "text.jpg": b"not an image at all", "truncated.dcm": raw_with()[:-100]})
    for name, data in {**good, **bad}.items():
        (root / name).write_bytes(data)
    out = tmp_path / "results.csv"
    r = subprocess.run([sys.executable, "-m", "mediflow", "analyze", str(root), "--out", str(out), "--model",
                        str(tiny_model), "--no-progress"], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "Warning" not in r.stderr, r.stderr
    with open(out, newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted({**good, **bad})
    assert all(rows[n]["error"] == "" and rows[n]["prediction"] for n in good)
    for n in bad:
        assert rows[n]["error"].startswith(f"{n}: ") and rows[n]["prediction"] == "", rows[n]
    faults = list(FAULTS.items())
    for i, (_, (_, detail)) in enumerate(faults):
        assert detail in rows[f"fault-{i:02d}.dcm"]["error"]
    assert (f"{len(good) + len(bad)} image files: {len(good)} analysed, 0 refused by the input check (no finding), "
            f"{len(bad)} unreadable (error rows)") in r.stdout
