from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg_bytes, make_dataset, png_bytes, xray_like
from mediflow.data.dataset import grouped_split, patient_id, scan_class_folders
from mediflow.data.images import decode_image, sniff_format
from mediflow.errors import DatasetError, ImageDecodeError, ImageTooLargeError


@pytest.mark.parametrize("name,expected", [
    ("person123_bacteria_456.jpeg", "person123"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0115-0001.jpeg", "NORMAL2-IM-0115"),
    ("scan_7.png", "file:scan_7.png"),
])
def test_patient_id(name, expected):
    assert patient_id(name) == expected


def test_sniff_format():
    img = xray_like(0, 0)
    assert sniff_format(jpeg_bytes(img)) == "jpeg"
    assert sniff_format(png_bytes(img)) == "png"
    assert sniff_format(b"\0" * 128 + b"DICM" + b"\0" * 10) == "dicom"
    assert sniff_format(b"hello world") is None


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_decode_modes_give_rgb(mode):
    base = xray_like(1, 3)
    if mode == "I;16":
        arr = (np.asarray(base, dtype=np.uint16) * 16)  # 12-bit data in a 16-bit PNG
        img = Image.fromarray(arr)
    else:
        img = base.convert(mode)
    out = decode_image(png_bytes(img))
    assert out.mode == "RGB" and out.size == base.size
    # 16-bit is windowed to the full 8-bit range rather than left nearly black
    assert np.asarray(out).max() >= 200


def test_decode_errors_say_what_is_wrong():
    good = jpeg_bytes(xray_like(0, 1, size=128))
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG or DICOM"):
        decode_image(b"just some text")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(good[: len(good) // 2])


def test_decompression_bomb_rejected_without_decoding():
    # A PNG header declaring 100k x 100k pixels; the body is tiny.
    img = Image.new("L", (1, 1))
    data = bytearray(png_bytes(img))
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data[8:8 + 25] = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode_image(bytes(data))


def test_jpeg_draft_downscales_but_keeps_size_above_target():
    big = xray_like(1, 2, size=1024)
    out = decode_image(jpeg_bytes(big), draft_size=224)
    assert 224 <= min(out.size) < 1024


def test_scan_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="no such folder"):
        scan_class_folders(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        scan_class_folders(tmp_path / "empty")
    one = tmp_path / "one" / "NORMAL"
    one.mkdir(parents=True)
    (one / "a.jpeg").write_bytes(jpeg_bytes(xray_like(0, 0)))
    with pytest.raises(DatasetError, match="at least 2 classes"):
        scan_class_folders(tmp_path / "one")


def test_grouped_split_keeps_patients_together_and_is_deterministic(tmp_path: Path):
    root = make_dataset(tmp_path / "d", n_per_class=40)
    samples = scan_class_folders(root / "train")
    a_train, a_val = grouped_split(samples, val_fraction=0.25, seed=1)
    b_train, b_val = grouped_split(samples, val_fraction=0.25, seed=1)
    assert [p.name for p in a_val.paths] == [p.name for p in b_val.paths]
    train_pids = {patient_id(p.name) for p in a_train.paths}
    val_pids = {patient_id(p.name) for p in a_val.paths}
    assert not train_pids & val_pids
    assert set(a_val.labels) == {0, 1}  # stratified: both classes in validation
    assert len(a_train) + len(a_val) == len(samples)
    c_train, c_val = grouped_split(samples, val_fraction=0.25, seed=2)
    assert [p.name for p in c_val.paths] != [p.name for p in a_val.paths]


def test_identical_files_under_different_patients_stay_in_one_split(tmp_path: Path):
    root = make_dataset(tmp_path / "d", n_per_class=40)
    cls = root / "train" / "PNEUMONIA"
    dup = (cls / "person0_bacteria_0.jpeg").read_bytes()
    (cls / "person999_virus_1.jpeg").write_bytes(dup)
    samples = scan_class_folders(root / "train")
    for seed in range(5):
        train, val = grouped_split(samples, val_fraction=0.25, seed=seed)
        names_val = {p.name for p in val.paths}
        assert ("person0_bacteria_0.jpeg" in names_val) == ("person999_virus_1.jpeg" in names_val)


def test_real_data_split_has_no_patient_overlap(real_data: Path):
    samples = scan_class_folders(real_data / "train")
    assert samples.class_names == ["NORMAL", "PNEUMONIA"]
    assert len(samples) == 5216
    train, val = grouped_split(samples, val_fraction=0.2, seed=0)
    assert not {patient_id(p.name) for p in train.paths} & {patient_id(p.name) for p in val.paths}
    frac = np.mean(np.asarray(val.labels) == 1)
    assert 0.68 < frac < 0.80  # class balance preserved (74% PNEUMONIA overall)
