"""What `mediflow train` and `mediflow evaluate` say: the recipe and its configuration at the start,
the same metric names per epoch and at the end with the operating point named, a true `--help` with
defaults, tidy report paths, 4-digit figures and plot titles naming the model and the films."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from mediflow.checkpoint import load_checkpoint
from mediflow.cli import main

BASE = ["--weights", "none", "--image-size", "64", "--val-fraction", "0.3", "--no-progress"]


def test_train_log_names_the_recipe_config_and_the_operating_point(tmp_path: Path, tiny_data: Path, caplog):
    out = tmp_path / "m.pth"
    with caplog.at_level(logging.INFO, logger="mediflow.train"):
        assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", *BASE]) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "mediflow.train"]
    first = messages[0]
    assert first.startswith("recipe frozen; configuration")
    config = json.loads(first[first.index("{"):])
    assert config == load_checkpoint(out)["train_config"] | {"bf16": config["bf16"]}
    assert config["epochs"] == 2 and config["recipe"] == "frozen" and config["lr"] == 1e-3
    epochs = [m for m in messages if m.startswith("epoch ")]
    saved = next(m for m in messages if m.startswith("saved "))
    assert len(epochs) == 2
    for name in ("val AUC", "val balanced acc"):
        assert all(name in m for m in epochs) and name in saved
    assert all("at uncalibrated P = 0.5" in m for m in epochs)
    ckpt = load_checkpoint(out)
    assert f"at the operating point, calibrated P(PNEUMONIA) >= {ckpt['threshold']:.4f}" in saved
    # Figures to 4 digits, never a float's full repr.
    assert not re.search(r"\d\.\d{6,}", saved)


def test_train_help_is_true_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "partial (the bundled model's" in text and "probe (the bundled model's" not in text
    assert "generalises worse" not in text
    assert "(default: frozen)" in text and "(default: model.pth)" in text
    assert "default by recipe: frozen 5, partial 12, probe 1, finetune 8" in text
    assert "(default: None)" not in text


def test_evaluate_report_path_figures_and_plot_titles(tmp_path: Path, tiny_model: Path, tiny_data: Path, capsys,
                                                      monkeypatch):
    from matplotlib.axes import Axes

    from mediflow.inference.predictor import Predictor

    titles: list[str] = []
    original = Axes.set_title

    def spy(self, label, *args, **kwargs):
        titles.append(str(label))
        return original(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", spy)
    shutil.copytree(tiny_data / "val", tmp_path / "films" / "test_set")
    report = tmp_path / "r"
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(tmp_path / "films" / "test_set"),
                 "--out", str(report) + "//"]) == 0
    out = capsys.readouterr().out
    assert f"report written to {report}/ (" in out and "//" not in out
    threshold = re.search(r"threshold ([0-9.]+)\)", out).group(1)
    assert len(threshold.split(".")[1]) == 4
    info = Predictor.load(tiny_model).info
    assert len(titles) == 2
    for title in titles:
        assert f"{info.architecture} {info.version} on films/test_set (8 films)" in title
