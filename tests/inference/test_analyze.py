"""`mediflow analyze DIR --out results.csv`: mixed formats, error rows, resume after interruption."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, png_bytes, xray_like
from db_fixtures import tiny_predictor  # noqa: F401  (fixture)
from dicom_factory import dicom_bytes, gradient, structured_report_bytes

from mediflow.cli import main
from mediflow.data.images import load_image
from mediflow.inference.folder import analyze_folder, csv_columns
from mediflow.inference.predictor import Predictor

GOOD = ["NORMAL/a.jpeg", "NORMAL/b.png", "PNEUMONIA/c.dcm", "PNEUMONIA/series/IM000001", "d.JPG",
        "multi.dicom"]
BAD = ["broken.jpeg", "report.dcm"]


def make_folder(root: Path) -> Path:
    files = {
        "NORMAL/a.jpeg": jpeg_bytes(xray_like(0, 1)),
        "NORMAL/b.png": png_bytes(xray_like(0, 2)),
        "PNEUMONIA/c.dcm": dicom_bytes(np.asarray(xray_like(1, 3), dtype=np.uint16) * 16, bits_stored=12),
        "PNEUMONIA/series/IM000001": dicom_bytes(255 - np.asarray(xray_like(1, 4)), photometric="MONOCHROME1"),
        "d.JPG": jpeg_bytes(xray_like(1, 5)),
        "multi.dicom": dicom_bytes(np.stack([gradient(top=255, dtype=np.uint8)] * 2)),
        "broken.jpeg": jpeg_bytes(xray_like(0, 6))[:200],
        "report.dcm": structured_report_bytes(),
        # Not images: skipped, and said so.
        "notes.txt": b"reading notes",
        "PNEUMONIA/empty": b"",
        ".hidden.png": png_bytes(xray_like(0, 7)),
        "PNEUMONIA/series/DICOMDIR": b"\0" * 128 + b"DICM" + b"\0" * 16,
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def analyze(root: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["analyze", str(root), "--out", str(out), "--model", str(model), "--no-progress", *extra])


def test_mixed_formats_and_error_rows(tmp_path, tiny_model, tiny_predictor, capsys):
    root = make_folder(tmp_path / "films")
    out = tmp_path / "results.csv"
    assert analyze(root, out, tiny_model, "--batch-size", "3") == 0
    rows = read_rows(out)
    predictor = tiny_predictor
    assert list(rows[0].keys()) == csv_columns(predictor.class_names)
    assert sorted(r["file"] for r in rows) == sorted(GOOD + BAD)
    by_file = {r["file"]: r for r in rows}
    for name in GOOD:
        r = by_file[name]
        assert r["error"] == "" and r["prediction"] in predictor.class_names
        # Batched analysis gives what one-at-a-time prediction gives.
        single = predictor.predict_image(load_image(root / name))
        for c in predictor.class_names:
            assert float(r[f"p_{c}"]) == pytest.approx(single["probabilities"][c], abs=2e-4)
        assert r["needs_review"] == str(single["needs_review"])
    assert by_file["multi.dicom"]["notes"] == "multi-frame DICOM: first frame of 2 analysed"
    assert by_file["broken.jpeg"]["error"].startswith("broken.jpeg: corrupt or truncated JPEG")
    assert by_file["report.dcm"]["error"].startswith("report.dcm: DICOM has no image (SOP class Basic Text SR")
    assert by_file["report.dcm"]["prediction"] == ""
    printed = capsys.readouterr().out
    assert "8 image files: 6 analysed, 0 refused by the input check (no finding), 2 unreadable" in printed
    # What was not analysed, and why: counted and named.
    assert "skipped 4 entries that are not images" in printed
    assert "notes.txt: not a JPEG, PNG, WebP, TIFF or DICOM file by its extension (.txt)" in printed
    assert "PNEUMONIA/empty: empty file (0 bytes) without an image extension" in printed
    assert "PNEUMONIA/series/DICOMDIR: DICOMDIR" in printed and ".hidden.png: hidden file" in printed


def test_error_rows_are_retried_on_resume_and_the_model_is_recorded(tmp_path, tiny_model, tiny_predictor, capsys):
    import json

    from mediflow.inference.folder import provenance_path

    root = make_folder(tmp_path / "films")
    out = tmp_path / "results.csv"
    assert analyze(root, out, tiny_model) == 0
    first = {r["file"]: r for r in read_rows(out)}
    assert first["broken.jpeg"]["error"]
    # The file is repaired; a resumed run analyses it again, and only it; each file keeps one row.
    (root / "broken.jpeg").write_bytes(jpeg_bytes(xray_like(0, 6)))
    capsys.readouterr()
    assert analyze(root, out, tiny_model, "--no-retry-errors") == 0
    assert "0 analysed" in capsys.readouterr().out and read_rows(out) == list(first.values())
    assert analyze(root, out, tiny_model) == 0
    printed = capsys.readouterr().out
    assert "1 analysed" in printed and "2 error rows tried again" in printed
    rows = read_rows(out)
    assert sorted(r["file"] for r in rows) == sorted(GOOD + BAD)
    by_file = {r["file"]: r for r in rows}
    assert by_file["broken.jpeg"]["error"] == "" and by_file["broken.jpeg"]["prediction"]
    assert by_file["report.dcm"]["error"]  # still no image in it
    assert all(by_file[n] == first[n] for n in GOOD)  # answered rows kept as they were
    # The sidecar: which model (SHA-256, version) at which operating point, and every run.
    record = json.loads(provenance_path(out).read_text())
    info = tiny_predictor.info
    assert record["model"]["sha256"] == info.sha256 and record["model"]["version"] == info.version
    assert record["operating_point"]["calibrated_threshold"] == pytest.approx(tiny_predictor.threshold, abs=1e-6)
    assert [r["error_rows_retried"] for r in record["runs"]] == [0, 0, 2]
    assert record["runs"][0]["not_images"][0] == {"file": ".hidden.png", "reason": "hidden file"}
    assert all("finished" in r for r in record["runs"])
    # Resuming with another model is refused: one CSV, one model.
    record["model"]["sha256"] = "f" * 64
    provenance_path(out).write_text(json.dumps(record))
    assert analyze(root, out, tiny_model) == 2
    assert "written by another model" in capsys.readouterr().err


def test_resume_after_lost_and_cut_rows(tmp_path, tiny_predictor):
    root = make_folder(tmp_path / "films")
    out = tmp_path / "results.csv"
    analyze_folder(tiny_predictor, root, out, batch_size=2, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    kept = lines[:-3]
    # The last two rows are lost, the one before is cut mid-write (as by a kill during a write).
    out.write_text("".join(kept) + lines[-3][:7])
    summary = analyze_folder(tiny_predictor, root, out, progress=False, retry_errors=False)
    assert summary.skipped == len(kept) - 1 and summary.analysed + summary.failed == 3
    rows = read_rows(out)
    assert sorted(r["file"] for r in rows) == sorted(GOOD + BAD)  # each file exactly once
    assert out.read_text().startswith("".join(kept))  # earlier rows untouched


def test_files_already_in_the_csv_are_not_analysed_again(tmp_path, tiny_predictor):
    root = make_folder(tmp_path / "films")
    out = tmp_path / "results.csv"
    columns = csv_columns(tiny_predictor.class_names)
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        w.writerow(["NORMAL/a.jpeg", "FROM-EARLIER-RUN", "0.5", "0.5", "0.5", "False", "ok", "", "", ""])
    analyze_folder(tiny_predictor, root, out, progress=False)
    rows = read_rows(out)
    assert [r["prediction"] for r in rows if r["file"] == "NORMAL/a.jpeg"] == ["FROM-EARLIER-RUN"]
    assert len(rows) == len(GOOD + BAD)


class InterruptingPredictor:
    """A real predictor that is interrupted (Ctrl-C) during its second batch."""

    def __init__(self, predictor: Predictor):
        self._p, self.batches = predictor, 0

    def __getattr__(self, name):
        return getattr(self._p, name)

    def forward(self, batch, **kwargs):
        self.batches += 1
        if self.batches == 2:
            raise KeyboardInterrupt
        return self._p.forward(batch, **kwargs)


def test_interrupted_run_loses_at_most_the_current_batch(tmp_path, tiny_predictor):
    root = make_folder(tmp_path / "films")
    out = tmp_path / "results.csv"
    with pytest.raises(KeyboardInterrupt):
        analyze_folder(InterruptingPredictor(tiny_predictor), root, out, batch_size=3, progress=False)
    first = read_rows(out)
    assert len(first) == 3  # the first batch was flushed; the second was in flight
    summary = analyze_folder(tiny_predictor, root, out, batch_size=3, progress=False)
    assert summary.skipped == 3 and summary.analysed + summary.failed == 5
    assert sorted(r["file"] for r in read_rows(out)) == sorted(GOOD + BAD)


def test_nothing_analysable_is_an_error(tmp_path, tiny_model, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "x.jpeg").write_bytes(b"not a jpeg")
    (root / "y.dcm").write_bytes(structured_report_bytes())
    assert analyze(root, tmp_path / "r.csv", tiny_model) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mediflow analyze: error: no file under") and "\n" not in err
    assert len(read_rows(tmp_path / "r.csv")) == 2


@pytest.mark.parametrize("setup,message", [
    (lambda root: None, "no such folder"),
    (lambda root: (root.mkdir(), (root / "readme.txt").write_text("x")), "no JPEG, PNG, WebP, TIFF or DICOM files"),
])
def test_missing_or_empty_folder(tmp_path, tiny_model, capsys, setup, message):
    root = tmp_path / "films"
    setup(root)
    assert analyze(root, tmp_path / "r.csv", tiny_model) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_csv_of_another_model_is_left_alone(tmp_path, tiny_model, capsys):
    root = make_folder(tmp_path / "films")
    out = tmp_path / "results.csv"
    out.write_text("file,label\nx.jpeg,CAT\n")
    assert analyze(root, out, tiny_model) == 2
    assert "are not this model's" in capsys.readouterr().err
    assert out.read_text() == "file,label\nx.jpeg,CAT\n"
