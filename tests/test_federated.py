"""Federated training (mediflow/federated): partitions, histogram statistics, DP accounting, and a
real Flower simulation on tiny data whose checkpoint `mediflow evaluate` loads."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from mediflow.data.dataset import _group_ids, scan_class_folders
from mediflow.evaluation.metrics import compute_metrics
from mediflow.federated.partition import partition
from mediflow.federated.stats import dp_epsilon, fit_from_histograms, histogram_auc, margin_histograms
from mediflow.training.calibration import softmax

NAMES = ["NORMAL", "PNEUMONIA"]


@pytest.mark.parametrize("how", ["patient", "label-skew", "framing"])
def test_partition_keeps_patients_together_and_covers_every_film(tiny_data: Path, how: str):
    samples = scan_class_folders(tiny_data / "train")
    sites = partition(samples, 3, how, seed=1)
    paths = [p for s in sites for p in s.paths]
    assert sorted(paths) == sorted(samples.paths)  # disjoint and complete
    groups = dict(zip(samples.paths, _group_ids(samples)))
    site_of_group = {}
    for i, s in enumerate(sites):
        for p in s.paths:
            assert site_of_group.setdefault(groups[p], i) == i  # a patient never spans two sites
    assert partition(samples, 3, how, seed=1)[0].paths == sites[0].paths  # same seed, same shards


def test_label_skew_differs_in_class_balance(tmp_path: Path):
    from conftest import make_dataset

    samples = scan_class_folders(make_dataset(tmp_path / "d", n_per_class=60) / "train")
    shares = [s.counts()["PNEUMONIA"] / len(s) for s in partition(samples, 3, "label-skew", seed=0)]
    iid = [s.counts()["PNEUMONIA"] / len(s) for s in partition(samples, 3, "patient", seed=0)]
    assert max(shares) - min(shares) > max(iid) - min(iid)


def test_histogram_statistics_match_the_films_they_summarise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    logits = np.stack([np.zeros(400), rng.normal(2.0 * y - 1.0, 1.5)], axis=1)
    neg, pos = margin_histograms(logits, y, NAMES)
    assert sum(neg) == (y == 0).sum() and sum(pos) == (y == 1).sum() and len(neg) == 640
    exact = compute_metrics(y, softmax(logits), NAMES, threshold=0.5)["auc"]
    assert histogram_auc(neg, pos, NAMES) == pytest.approx(exact, abs=0.005)
    # Two sites' histograms add up to the pooled one.
    a = margin_histograms(logits[:150], y[:150], NAMES)
    b = margin_histograms(logits[150:], y[150:], NAMES)
    assert (np.add(a[0], b[0]).tolist(), np.add(a[1], b[1]).tolist()) == (neg, pos)
    fit = fit_from_histograms(neg, pos, NAMES, min_sensitivity=0.97)
    assert fit["val_metrics"]["sensitivity"] >= 0.97 and 0 < fit["threshold"] <= 1
    assert 0.05 < fit["temperature"] < 20


def test_dp_epsilon_shrinks_with_noise_and_grows_with_rounds():
    assert dp_epsilon(2.0, 5, 1e-5) < dp_epsilon(1.0, 5, 1e-5) < dp_epsilon(1.0, 20, 1e-5)
    assert dp_epsilon(0.0, 5, 1e-5) == float("inf")


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mediflow", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.mark.slow
def test_simulation_writes_a_checkpoint_evaluate_loads_and_only_weights_and_aggregates_left(
        tiny_data: Path, tmp_path: Path):
    out = tmp_path / "fed.pth"
    r = run_cli("federated", "simulate", "--data", str(tiny_data), "--sites", "2", "--rounds", "2",
                "--weights", "none", "--image-size", "64", "--partition", "label-skew", "--dp-noise", "0.5",
                "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    from mediflow.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    fed = ckpt["federated"]
    assert fed["sites"] == 2 and fed["rounds"] == 2 and "2 sites" in ckpt["training_data"]
    assert fed["differential_privacy"]["epsilon"] == pytest.approx(dp_epsilon(0.5, 2, 1e-5))
    audit = json.loads(Path(str(out) + ".audit.json").read_text())
    train_keys = {"num-examples", "train-loss", "source-jpeg-quality"}
    eval_keys = {"num-examples", "val-loss", "hist-neg", "hist-pos"}
    assert len(audit["received"]) == 2 * 2 * 2  # 2 rounds x (train + evaluate) x 2 sites
    for rec in audit["received"]:
        assert "error" not in rec
        if rec["phase"] == "train":
            assert rec["records"] == ["arrays", "metrics"]
            assert set(rec["arrays"]) == {"head.weight", "head.bias"}  # the frozen recipe's head only
            assert set(rec["metrics"]) == train_keys
        else:
            assert rec["records"] == ["metrics"] and set(rec["metrics"]) == eval_keys
            assert rec["metrics"]["hist-neg"] == "list[640]"
    report = tmp_path / "report"
    r = run_cli("evaluate", "--model", str(out), "--data", str(tiny_data / "val"), "--out", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((report / "metrics.json").read_text())
    assert m["n"] == 8 and m["threshold"] == pytest.approx(ckpt["threshold"])
