"""Training resumes where it stopped, and recipes are named configuration files."""

from pathlib import Path

import pytest
import torch
from conftest import REPO, make_dataset

from mediflow.checkpoint import load_checkpoint
from mediflow.cli import build_parser, main

# Deterministic and small: 32 px films, one process, no data-loading workers, float32; no
# calibration (an L-BFGS fit after training, the slowest part of so small a run).
TINY = ["--weights", "none", "--image-size", "32", "--val-fraction", "0.3", "--no-progress", "--workers", "0",
        "--device", "cpu", "--no-bf16", "--batch-size", "4", "--epochs", "3", "--no-calibrate"]
RECIPE_OPTIONS = {
    # pooled features, head only, constant lr; keeps the best epoch, not the last
    "frozen": ["--recipe", "frozen", "--feature-views", "2"],
    # cached activations through the last 2 stages: AdamW, warm-up + cosine schedule, dropout
    "partial": ["--recipe", "partial", "--unfreeze", "2", "--feature-views", "2"],
    # images through the whole network: augmentation and shuffling draw from the random state
    "finetune": ["--recipe", "finetune", "--unfreeze", "1"],
}


@pytest.mark.parametrize("recipe", list(RECIPE_OPTIONS))
def test_run_interrupted_after_an_epoch_and_resumed_ends_with_the_uninterrupted_weights(
        tmp_path: Path, monkeypatch, recipe: str):
    from mediflow.training import train as train_module

    data = make_dataset(tmp_path / "data", n_per_class=6, size=32)
    args = ["train", "--data", str(data), *RECIPE_OPTIONS[recipe], *TINY]
    whole = tmp_path / "whole.pth"
    assert main([*args, "--out", str(whole)]) == 0

    save = train_module.save_training_state

    def save_then_stop(path, state):  # Ctrl-C right after epoch 1's state is on disk
        save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_training_state", save_then_stop)
    part = tmp_path / "part.pth"
    assert main([*args, "--out", str(part)]) == 130
    monkeypatch.undo()
    state_file = tmp_path / "part.resume.pth"
    assert not part.exists() and state_file.is_file()
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and [h["epoch"] for h in state["history"]] == [1]
    assert state["optimizer"]["state"], "the optimizer's moments are saved"
    assert state["lr_scheduler"]["last_epoch"] > 0

    assert main([*args, "--out", str(part), "--resume", str(state_file)]) == 0
    a, b = load_checkpoint(whole), load_checkpoint(part)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"resumed run's weights differ from the uninterrupted run's: {differ[:5]}"
    assert b["history"] == a["history"] and [h["epoch"] for h in b["history"]] == [1, 2, 3]
    assert b["threshold"] == a["threshold"]


def test_resume_refuses_another_recipes_state(tmp_path: Path, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=6, size=32)
    args = ["train", "--data", str(data), *TINY, "--epochs", "1"]
    assert main([*args, "--recipe", "frozen", "--out", str(tmp_path / "m.pth")]) == 0
    capsys.readouterr()
    assert main([*args, "--recipe", "finetune", "--out", str(tmp_path / "f.pth"),
                 "--resume", str(tmp_path / "m.resume.pth")]) == 2
    assert "state is of the frozen recipe, not finetune" in capsys.readouterr().err


def test_bundled_recipe_file_is_the_bundled_models_training_configuration(tmp_path: Path, monkeypatch):
    from mediflow.commands.train import command_line_values
    from mediflow.training.config import RECIPE_DIR, config_path, read_config_file, resolve_config

    recorded = load_checkpoint(REPO / "mediflow" / "bundled" / "mediflow_lungs_best.pth")["train_config"]
    monkeypatch.chdir(tmp_path)  # found inside the package, as an installed one would be
    for name in ("bundled", "bundled.toml", "recipes/bundled.toml"):
        assert config_path(name) == RECIPE_DIR / "bundled.toml"
    # What the run was told besides the recipe: where the data and the output were, no progress bars.
    argv = ["train", "--config", "recipes/bundled.toml", "--data", recorded["data"], "--out", recorded["out"],
            "--no-progress"]
    args = build_parser().parse_args(argv)
    cfg = resolve_config(read_config_file(args.config), command_line_values(args))
    assert cfg.to_dict() == recorded


def test_command_line_options_override_the_config_file(tmp_path: Path):
    from mediflow.commands.train import command_line_values
    from mediflow.training.config import read_config_file, resolve_config

    args = build_parser().parse_args(["train", "--config", "bundled", "--data", "d", "--epochs", "2",
                                      "--augment", "xray", "--no-calibrate"])
    cfg = resolve_config(read_config_file(args.config), command_line_values(args))
    assert (cfg.epochs, cfg.augment, cfg.calibrate) == (2, "xray", False)  # the command line's
    assert (cfg.recipe, cfg.feature_views, cfg.framing) == ("partial", 8, "trim")  # the file's
    assert (cfg.lr, cfg.select) == (1e-3, "last")  # the partial recipe's, set by neither


@pytest.mark.parametrize("text, message", [
    ("epochs = 'six'", "configuration key 'epochs' should be int, got 'six'"),
    ("epoks = 6", "unknown key 'epoks'"),
    ("recipe = 'fast'", "unknown recipe 'fast'"),
    ("epochs = ", "not a readable TOML file"),
])
def test_bad_config_file_is_a_one_line_error(tmp_path: Path, capsys, text: str, message: str):
    config = tmp_path / "c.toml"
    config.write_text(text + "\n")
    assert main(["train", "--config", str(config), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert main(["train", "--config", "elsewhere/bundled.toml", "--data", str(tmp_path)]) == 2
    assert "no such file, nor a packaged configuration (packaged: bundled)" in capsys.readouterr().err
