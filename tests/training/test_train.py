import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, jpeg_bytes, make_dataset, xray_like

from mediflow.checkpoint import load_checkpoint
from mediflow.cli import main

BASE = ["--weights", "none", "--image-size", "64", "--val-fraction", "0.3", "--no-progress"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mediflow", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=env)


def test_checkpoint_has_design_keys_and_loads_weights_only(tiny_model: Path):
    ckpt = torch.load(tiny_model, map_location="cpu", weights_only=True)
    for key in ("epoch", "state_dict", "class_names", "best_val_acc", "architecture", "preprocessing",
                "threshold", "temperature", "val_metrics", "train_config", "seed", "versions", "file_list_sha256"):
        assert key in ckpt, key
    assert ckpt["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert ckpt["preprocessing"]["image_size"] == 64
    assert 0 < ckpt["threshold"] <= 1
    assert ckpt["val_metrics"]["sensitivity"] >= 0.97  # the threshold rule holds on validation


def test_checkpoint_that_runs_code_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "architecture": "x", "class_names": [], "payload": Evil()}, bad)
    r = run_cli("predict", "--model", str(bad), str(bad))
    assert r.returncode == 2
    assert "not a loadable MediFlow checkpoint" in r.stderr and "pwned" not in r.stdout


@pytest.mark.parametrize("recipe", ["frozen", "finetune"])
def test_train_then_evaluate_writes_report(tmp_path: Path, tiny_data: Path, recipe: str):
    out = tmp_path / "m.pth"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--recipe", recipe,
                 "--class-weights", "3,1", *BASE]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["train_config"]["recipe"] == recipe
    assert ckpt["train_config"]["class_weights"] == [3.0, 1.0]
    assert len(ckpt["history"]) == 2
    import json
    import shutil

    # A root holding test/ (the Kaggle layout) evaluates its test split.
    shutil.copytree(tiny_data / "val", tiny_data / "test")
    report = tmp_path / "r"
    assert main(["evaluate", "--model", str(out), "--data", str(tiny_data), "--out", str(report)]) == 0
    m = json.loads((report / "metrics.json").read_text())
    for key in ("n", "accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "threshold",
                "per_class", "confusion_matrix", "class_names"):
        assert key in m
    assert m["n"] == 8 and np.array(m["confusion_matrix"]).sum() == 8
    assert m["threshold"] == pytest.approx(ckpt["threshold"])
    assert (report / "confusion_matrix.png").stat().st_size > 1000
    assert (report / "roc.png").stat().st_size > 1000
    lines = (report / "predictions.csv").read_text().splitlines()
    assert lines[0] == "file,label,probability_PNEUMONIA,prediction" and len(lines) == 9


def test_same_seed_same_split_and_weights(tmp_path: Path, tiny_data: Path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    for out in (a, b):
        assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--seed", "3", *BASE]) == 0
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["val_file_list_sha256"] == cb["val_file_list_sha256"]
    assert torch.equal(ca["state_dict"]["head.weight"], cb["state_dict"]["head.weight"])


def test_resume_continues_from_checkpoint(tmp_path: Path, tiny_data: Path):
    first = tmp_path / "first.pth"
    assert main(["train", "--data", str(tiny_data), "--out", str(first), "--epochs", "1", *BASE]) == 0
    second = tmp_path / "second.pth"
    # At lr 0 the resumed epochs cannot move a weight, so the saved weights must be exactly the ones
    # loaded from `first`; a resume that skipped loading them would save the fresh initialisation's
    # head, which one epoch of training has moved away from.
    assert main(["train", "--data", str(tiny_data), "--out", str(second), "--epochs", "3", "--resume", str(first),
                 "--lr", "0", *BASE]) == 0
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert [h["epoch"] for h in b["history"]] == [2, 3]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    changed = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not changed, f"resumed weights differ from the checkpoint's: {changed[:5]}"


def _bad_datasets(tmp: Path) -> dict[str, Path]:
    cases = {"missing path": tmp / "nope"}
    (tmp / "empty").mkdir()
    cases["empty folder"] = tmp / "empty"
    single = tmp / "single" / "NORMAL"
    single.mkdir(parents=True)
    for i in range(4):
        (single / f"IM-{i:04d}-0001.jpeg").write_bytes(jpeg_bytes(xray_like(0, i)))
    cases["single class"] = tmp / "single"
    corrupt = make_dataset(tmp / "corrupt")
    good = (corrupt / "train" / "NORMAL" / "IM-0000-0001.jpeg").read_bytes()
    (corrupt / "train" / "NORMAL" / "IM-0999-0001.jpeg").write_bytes(good[:300])
    cases["corrupt image"] = corrupt
    nonimage = make_dataset(tmp / "nonimage")
    (nonimage / "train" / "PNEUMONIA" / "notes.txt").write_text("not an x-ray")
    cases["non-image file"] = nonimage
    return cases


EXPECTED = {
    "missing path": "no such folder",
    "empty folder": "no class sub-folders",
    "single class": "at least 2 classes",
    "corrupt image": "IM-0999-0001.jpeg: corrupt or truncated",
    "non-image file": "notes.txt: not a JPEG, PNG, WebP, TIFF or DICOM",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_dataset_gets_one_line_error(tmp_path: Path, case: str):
    data = _bad_datasets(tmp_path)[case]
    r = run_cli("train", "--data", str(data), "--out", str(tmp_path / "m.pth"), *BASE)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert EXPECTED[case] in err[0]
    assert not (tmp_path / "m.pth").exists()


def test_skip_bad_skips_and_counts(tmp_path: Path):
    data = _bad_datasets(tmp_path)["non-image file"]
    r = run_cli("train", "--data", str(data), "--out", str(tmp_path / "m.pth"), "--epochs", "1", "--skip-bad", *BASE)
    assert r.returncode == 0, r.stderr
    assert "skipped 1 bad file(s)" in r.stderr


def test_bad_options_get_one_line_errors(tmp_path: Path, tiny_data: Path):
    r = run_cli("train", "--data", str(tiny_data), "--class-weights", "3,1,2", *BASE)
    assert r.returncode == 2 and "--class-weights has 3 values for 2 classes" in r.stderr
    r = run_cli("train", "--data", str(tiny_data), "--weights", str(tmp_path / "none.pth"), "--image-size", "64")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_torchrun_two_cpu_processes_write_one_checkpoint(tmp_path: Path, tiny_data: Path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mediflow",
         "train", "--data", str(tiny_data), "--out", str(outdir / "ddp.pth"), "--epochs", "2", "--device", "cpu",
         "--workers", "0", *BASE],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # Rank 0 alone writes: the model and the state --resume continues from.
    assert sorted(p.name for p in outdir.iterdir()) == ["ddp.pth", "ddp.resume.pth"]
    ckpt = load_checkpoint(outdir / "ddp.pth")
    assert ckpt["world_size"] == 2
    from mediflow.data.dataset import grouped_split, scan_class_folders

    _, val = grouped_split(scan_class_folders(tiny_data / "train"), val_fraction=0.3, seed=0)
    assert ckpt["val_metrics"]["n"] == len(val)  # gathered from both ranks, each image once


def test_evaluate_rejects_classes_the_model_does_not_know(tmp_path: Path, tiny_model: Path, tiny_data: Path):
    r = run_cli("evaluate", "--model", str(tiny_model), "--data", str(tiny_data), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "not among the model's" in r.stderr


@pytest.mark.parametrize("select,kept", [("best", 1), ("last", 2)])
def test_epoch_selection_rule(select: str, kept: int):
    from mediflow.training.config import TrainConfig
    from mediflow.training.train import Trainer

    trainer = Trainer(TrainConfig(select=select, device="cpu", progress=False))
    y = np.array([0, 0, 1, 1])
    separating = np.array([[2.0, -2.0], [1.0, -1.0], [-1.0, 1.0], [-2.0, 2.0]])
    best, history = None, []
    for epoch, logits in ((1, separating), (2, separating[[2, 1, 0, 3]])):  # epoch 2 ranks worse
        best = trainer._select(best, epoch, torch.nn.Linear(2, 2), logits, y, history, 0.1, ["NORMAL", "PNEUMONIA"])
    assert best["epoch"] == kept and [h["epoch"] for h in history] == [1, 2]


def test_fine_tuning_recipes_keep_the_last_epoch_and_frozen_the_best():
    from mediflow.training.config import RECIPES

    assert RECIPES["partial"]["select"] == RECIPES["finetune"]["select"] == "last"
    assert RECIPES["frozen"].get("select", "best") == "best"
