"""`mediflow feedback export`: reviewed studies with stored images -> a dataset `mediflow train` accepts."""

from __future__ import annotations

import csv

from conftest import jpeg_bytes, png_bytes, xray_like
from db_fixtures import add_fake_study, database_url, store  # noqa: F401  (fixtures)

from mediflow.cli import main
from mediflow.data.dataset import check_images, scan_class_folders
from mediflow.store import repository
from mediflow.training.config import TrainConfig
from mediflow.training.train import load_splits


def add(store, p: float, data: bytes | None, fmt: str = "jpeg"):
    return add_fake_study(store, p, image=data, fmt=fmt, threshold=0.5)


def review(store, sid, label: str, reviewer: str = "dr_a") -> None:
    with store.session() as s:
        repository.add_review(s, sid, label=label, note=None, reviewer=reviewer)


def test_export_writes_a_class_folder_dataset_with_a_manifest(store, database_url, tmp_path, tiny_data, capsys):
    films = {name: jpeg_bytes(xray_like(i % 2, seed=40 + i)) for i, name in enumerate("abc")}
    confirmed = add(store, 0.9, films["a"])
    corrected = add(store, 0.8, films["b"])
    unreviewed = add(store, 0.7, films["c"])
    png = add(store, 0.2, png_bytes(xray_like(0, seed=9)), fmt="png")
    no_image = add(store, 0.6, None)
    review(store, confirmed, "PNEUMONIA")
    review(store, corrected, "PNEUMONIA", reviewer="dr_a")
    review(store, corrected, "NORMAL", reviewer="dr_b")  # the current read wins
    review(store, png, "NORMAL")
    review(store, no_image, "NORMAL")

    out = tmp_path / "feedback"
    assert main(["feedback", "export", str(out), "--database-url", database_url]) == 0
    printed = capsys.readouterr().out
    assert "exported 3 reviewed studies (NORMAL: 2, PNEUMONIA: 1)" in printed
    assert "skipped 1 reviewed studies with no stored image" in printed

    assert (out / "PNEUMONIA" / f"{confirmed}.jpeg").read_bytes() == films["a"]
    assert (out / "NORMAL" / f"{corrected}.jpeg").read_bytes() == films["b"]
    assert (out / "NORMAL" / f"{png}.png").is_file()
    assert not any(str(unreviewed) in p.name or str(no_image) in p.name for p in out.rglob("*"))
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["study_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {str(confirmed), str(corrected), str(png)}
    assert rows[str(corrected)]["label"] == "NORMAL" and rows[str(corrected)]["reviewer"] == "dr_b"
    assert rows[str(corrected)]["model_prediction"] == "PNEUMONIA"
    assert rows[str(corrected)]["probability"] == "0.8000" and rows[str(corrected)]["reviewed_at"]

    # What `mediflow train --extra-data DIR` does with it.
    samples = check_images(scan_class_folders(out, min_classes=1), skip_bad=False)
    assert samples.counts() == {"NORMAL": 2, "PNEUMONIA": 1}
    base_train, _ = load_splits(TrainConfig(data=str(tiny_data), val_fraction=0.3))
    train, _ = load_splits(TrainConfig(data=str(tiny_data), val_fraction=0.3, extra_data=[str(out)]))
    assert len(train) == len(base_train) + 3
    assert set(samples.paths) <= set(train.paths)

    # A second export replaces the same files instead of failing or duplicating.
    assert main(["feedback", "export", str(out), "--database-url", database_url]) == 0
    assert sorted(p.name for p in (out / "NORMAL").iterdir()) == sorted([f"{corrected}.jpeg", f"{png}.png"])


def test_export_errors_are_one_line(tmp_path, capsys):
    rc = main(["feedback", "export", str(tmp_path / "out"), "--database-url", f"sqlite:///{tmp_path / 'none.db'}"])
    assert rc == 2 and "no database file" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    db = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["db", "upgrade", "--database-url", db]) == 0
    rc = main(["feedback", "export", str(tmp_path / "file"), "--database-url", db])
    assert rc == 2 and "not a folder" in capsys.readouterr().err
