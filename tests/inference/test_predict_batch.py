"""`mediflow predict`: JSON lines for files, a CSV for a folder, heatmap overlays, parallel decoding."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, xray_like
from PIL import Image

from mediflow.cli import main
from mediflow.errors import ImageDecodeError
from mediflow.inference.batch import prefetched_batches


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "films"
    for sub, label in (("a", 0), ("b", 1)):
        (d / sub).mkdir(parents=True)
        for i in range(5):
            (d / sub / f"img{i}.jpeg").write_bytes(jpeg_bytes(xray_like(label, 40 + i + 10 * label, 120)))
    (d / "b" / "broken.jpeg").write_bytes(jpeg_bytes(xray_like(0, 1, 120))[:200])
    (d / "notes.txt").write_text("not an image, and not picked up")
    return d


def test_folder_to_csv_with_bad_file(tiny_model: Path, folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "predictions.csv"
    rc = main(["predict", "--model", str(tiny_model), str(folder), "--batch-size", "4", "--out", str(out)])
    assert rc == 1  # one unreadable image
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 11 and [r["file"] for r in rows] == sorted(r["file"] for r in rows)
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["file"] == "b/broken.jpeg" and "corrupt or truncated" in bad[0]["error"]
    for r in (r for r in rows if not r["error"]):
        assert r["prediction"] in ("NORMAL", "PNEUMONIA")
        assert float(r["p_NORMAL"]) + float(r["p_PNEUMONIA"]) == pytest.approx(1, abs=2e-4)
        assert float(r["confidence"]) == pytest.approx(float(r[f"p_{r['prediction']}"]), abs=1e-4)
    err = capsys.readouterr().err
    assert ("11 image files: 10 predicted, 0 refused by the input check (no finding), 1 unreadable" in err
            and "1 image(s) could not be read" in err)


def test_csv_matches_single_image_answers(tiny_model: Path, folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "p.csv"
    main(["predict", "--model", str(tiny_model), str(folder / "a"), "--batch-size", "2", "--out", str(out)])
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    files = [str(folder / "a" / name) for name in sorted(rows)[:3]]
    capsys.readouterr()
    assert main(["predict", "--model", str(tiny_model), *files]) == 0
    for line in capsys.readouterr().out.strip().splitlines():
        single = json.loads(line)  # the JSON-lines behaviour for files is unchanged
        assert set(single) >= {"file", "prediction", "confidence", "disclaimer", "probabilities"}
        row = rows[Path(single["file"]).name]
        assert row["prediction"] == single["prediction"]
        assert float(row["p_PNEUMONIA"]) == pytest.approx(single["probabilities"]["PNEUMONIA"], abs=1e-4)


def test_heatmap_overlays_written(tiny_model: Path, folder: Path, tmp_path: Path, capsys):
    heat = tmp_path / "heat"
    rc = main(["predict", "--model", str(tiny_model), str(folder), "--heatmap", str(heat),
               "--out", str(tmp_path / "p.csv")])
    assert rc == 1
    pngs = sorted(p.name for p in heat.iterdir())
    # Named by the path under the folder, so a/img0 and b/img0 do not collide.
    assert len(pngs) == 10 and "a__img0.png" in pngs and "b__img0.png" in pngs and "b__broken.png" not in pngs
    img = Image.open(heat / "a__img0.png")
    assert img.format == "PNG" and img.size == (120, 120)
    # An overlay, not the plain film: the grey film gained colour (the tiny model's 2x2 map may be flat).
    arr = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(arr[..., 0] - arr[..., 2]).max() > 5
    # Single files: JSON lines name the overlay they wrote; same-named files do not overwrite each other.
    capsys.readouterr()
    assert main(["predict", "--model", str(tiny_model), str(folder / "a" / "img1.jpeg"),
                 str(folder / "b" / "img1.jpeg"), "--heatmap", str(tmp_path / "single")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    written = [Path(line["heatmap_file"]) for line in lines]
    assert [p.name for p in written] == ["img1.png", "img1-2.png"] and all(p.is_file() for p in written)
    assert all("heatmap" not in line for line in lines)


def test_bad_arguments_are_one_line_errors(tiny_model: Path, folder: Path, tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "empty"), "--out", str(tmp_path / "x.csv")], "no JPEG, PNG, WebP, TIFF or DICOM files"),
        ([str(folder)], "--out"),
        ([str(folder), str(folder / "a" / "img0.jpeg"), "--out", "x.csv"], "one folder"),
        ([str(folder), "--out", "x.csv", "--batch-size", "0"], "--batch-size"),
    ]
    for argv, message in cases:
        assert main(["predict", "--model", str(tiny_model), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_decoding_overlaps_inference():
    """While the consumer works on one batch, the next ones are already being decoded."""
    decoded_at: dict[int, float] = {}
    lock = threading.Lock()

    def load(i: int) -> int:
        time.sleep(0.02)
        with lock:
            decoded_at[i] = time.perf_counter()
        if i == 5:
            raise ImageDecodeError("item 5: bad")
        return i

    seen = []
    t0 = time.perf_counter()
    for batch in prefetched_batches(list(range(12)), load, batch_size=4, workers=2):
        if not seen:
            time.sleep(0.2)  # "inference" on the first batch
            started_second = time.perf_counter()
        seen += batch
    assert [i for i, _ in seen] == list(range(12))
    assert isinstance(dict(seen)[5], ImageDecodeError) and dict(seen)[4] == 4
    # Items of the next batches finished decoding during the first batch's "inference".
    assert sum(t < started_second for i, t in decoded_at.items() if i >= 4) >= 4
    assert time.perf_counter() - t0 < 0.2 + 12 * 0.02  # faster than decode-then-infer in sequence
