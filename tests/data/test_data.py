from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, jpeg_declaring, make_dataset, png_bytes, png_declaring, xray_like
from PIL import Image

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
    out = decode_image(png_bytes(img)).image
    assert out.mode == "RGB" and out.size == base.size
    # 16-bit is windowed to the full 8-bit range rather than left nearly black
    assert np.asarray(out).max() >= 200


def test_decode_errors_say_what_is_wrong():
    good = jpeg_bytes(xray_like(0, 1, size=128))
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG, WebP, TIFF or DICOM"):
        decode_image(b"just some text")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(good[: len(good) // 2])


@pytest.fixture
def pixel_loads(monkeypatch) -> list:
    """Records every decode of pixel data (PIL's ImageFile.load, which PNG and JPEG both use)."""
    from PIL import ImageFile

    calls = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_pixel_spy_sees_an_ordinary_decode(pixel_loads):
    decode_image(jpeg_bytes(xray_like(0, 1, size=64)))
    # (load() runs again, as a no-op, on convert) so an empty list below means "never decoded", not "spy blind"
    assert set(pixel_loads) == {(64, 64)}


# Pillow warns above Image.MAX_IMAGE_PIXELS (89.5 M) and MediFlow turns that warning into a refusal;
# 8000 x 8000 = 64 M is below it, so only MediFlow's own 50 M limit stands between it and a decode.
@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring], ids=["png", "jpeg"])
def test_bomb_below_pillows_limit_is_refused_by_mediflows_limit_without_decoding(make, pixel_loads):
    from mediflow.data.images import DEFAULT_MAX_PIXELS

    assert DEFAULT_MAX_PIXELS < 8000 * 8000 <= Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="8000x8000 pixels exceeds the limit of 50,000,000 pixels"):
        decode_image(make(8000, 8000))
    assert pixel_loads == []


@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring], ids=["png", "jpeg"])
def test_bomb_above_pillows_limit_is_refused_without_decoding(make, pixel_loads):
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode_image(make(60_000, 60_000))
    assert pixel_loads == []


def test_pixel_limit_is_inclusive_and_configurable(pixel_loads):
    data = png_bytes(xray_like(0, 2, size=40))  # 1600 pixels
    assert decode_image(data, max_pixels=1600).image.size == (40, 40)
    pixel_loads.clear()
    with pytest.raises(ImageTooLargeError, match="40x40 pixels exceeds the limit of 1,599 pixels"):
        decode_image(data, max_pixels=1599)
    assert pixel_loads == []


def test_jpeg_draft_downscales_but_keeps_size_above_target():
    big = xray_like(1, 2, size=1024)
    out = decode_image(jpeg_bytes(big), draft_size=224).image
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


@pytest.mark.realdata
def test_real_data_split_has_no_patient_overlap(real_data: Path):
    samples = scan_class_folders(real_data / "train")
    assert samples.class_names == ["NORMAL", "PNEUMONIA"]
    assert len(samples) == 5216
    train, val = grouped_split(samples, val_fraction=0.2, seed=0)
    assert not {patient_id(p.name) for p in train.paths} & {patient_id(p.name) for p in val.paths}
    frac = np.mean(np.asarray(val.labels) == 1)
    assert 0.68 < frac < 0.80  # class balance preserved (74% PNEUMONIA overall)


def test_a_checkpoints_split_is_the_one_it_trained_on(tmp_path: Path):
    """Training and everything that later rebuilds its split (int8 calibration, the input check's
    bank, ensembles) share data.splits: extra data and subsampling included."""
    from mediflow.data.splits import checkpoint_split
    from mediflow.training.config import TrainConfig
    from mediflow.training.train import load_splits

    data = make_dataset(tmp_path / "data", n_per_class=10)
    extra = make_dataset(tmp_path / "extra", n_per_class=3) / "train"
    for cfg in (TrainConfig(data=str(data), val_fraction=0.25, seed=3),
                TrainConfig(data=str(data), val_fraction=0.25, seed=3, extra_data=[str(extra)], max_train_samples=14),
                TrainConfig(data=str(data), val_dir=str(data / "val"), seed=1)):
        train, val = load_splits(cfg)
        rebuilt = checkpoint_split({"train_config": cfg.to_dict(), "seed": cfg.seed}, data)
        assert [(s.paths, s.labels) for s in rebuilt] == [(train.paths, train.labels), (val.paths, val.labels)]
    assert len(train) == 20 and len(val) == 8
    assert any(p.is_relative_to(extra)
               for p in load_splits(TrainConfig(data=str(data), extra_data=[str(extra)]))[0].paths)
