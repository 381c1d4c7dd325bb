"""Class folders may hold DICOM files: scanning, checking, training and evaluation read them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from dicom_factory import dicom_bytes
from PIL import Image

from mediflow.cli import main
from mediflow.data.dataset import ImageFolderDataset, check_images, scan_class_folders
from mediflow.preprocessing import PreprocessConfig, eval_transform


def convert_to_dicom(root: Path, every: int = 2) -> list[Path]:
    """Replace every `every`-th JPEG with a DICOM of the same film (alternating MONOCHROME1/2, 12-bit)."""
    made = []
    for i, jpeg in enumerate(sorted(root.rglob("*.jpeg"))):
        if i % every:
            continue
        film = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16) * 16  # 12-bit range
        if i % (2 * every):
            data = dicom_bytes(4095 - film, bits_stored=12, photometric="MONOCHROME1")
        else:
            data = dicom_bytes(film, bits_stored=12)
        dcm = jpeg.with_suffix(".dcm")
        dcm.write_bytes(data)
        jpeg.unlink()
        made.append(dcm)
    return made


def test_scan_and_dataset_read_dicom(tmp_path: Path):
    root = make_dataset(tmp_path / "data", n_per_class=4)
    made = convert_to_dicom(root / "train")
    samples = check_images(scan_class_folders(root / "train"), skip_bad=False)
    assert set(made) <= set(samples.paths) and len(samples) == 8
    ds = ImageFolderDataset(samples, eval_transform(PreprocessConfig(image_size=64)))
    x, y = ds[samples.paths.index(made[0])]
    assert tuple(x.shape) == (3, 64, 64) and y == samples.labels[samples.paths.index(made[0])]


def test_train_and_evaluate_on_a_folder_with_dicom(tmp_path: Path):
    root = make_dataset(tmp_path / "data", n_per_class=8)
    made = convert_to_dicom(root)
    out, report = tmp_path / "m.pth", tmp_path / "report"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--weights", "none",
                 "--image-size", "64", "--val-fraction", "0.3", "--no-progress"]) == 0
    assert main(["evaluate", "--model", str(out), "--data", str(root / "val"), "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    val_files = [p for p in (root / "val").rglob("*") if p.is_file()]
    assert metrics["n"] == len(val_files) == 8
    with open(report / "predictions.csv") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    val_dicoms = {p.name for p in made if "val" in p.parts}
    assert val_dicoms and val_dicoms <= {Path(f).name for f in files}
