"""`mediflow export --int8` says what it does, survives an interruption, and an incomplete or stale
export is recognised with the command to run."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

from mediflow.checkpoint import load_checkpoint, save_checkpoint
from mediflow.cli import main
from mediflow.inference.backends import OnnxBackend
from mediflow.inference.onnx_export import atomic_save, set_metadata
from mediflow.inference.predictor import Predictor


def export_cmd(pth: Path, data: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "mediflow", "export", "--model", str(pth), "--int8", "--data", data,
            "--distill-steps", str(steps)]


def test_interrupted_int8_export_leaves_nothing_half_made_and_a_rerun_completes(tiny_model: Path, tmp_path: Path):
    pth = tmp_path / "model.pth"
    shutil.copy(tiny_model, pth)
    data = load_checkpoint(pth)["train_config"]["data"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Interrupted during distillation (far more batches than it will get through).
    proc = subprocess.Popen(export_cmd(pth, data, 100000), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    lines = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "int8 distillation" in line:  # the progress bar has started
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    log = "".join(lines) + rest
    assert proc.returncode != 0
    assert "quantization-aware distillation" in log and "min)" in log  # what it does, with an estimate
    assert "Interrupting leaves no partial int8 file" in log
    assert pth.with_suffix(".onnx").is_file()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if "int8" in p.name or p.name.startswith("."))
    assert leftovers == [], leftovers
    # Run again: it completes, and the file carries its measured agreement.
    done = subprocess.run(export_cmd(pth, data, 5), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "int8 4/4" in done.stderr
    q = OnnxBackend(pth.with_suffix(".int8.onnx")).metadata["onnx"]["quantization"]
    assert "accepted" in q and "decision_agreement" in q
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_stale_and_incomplete_exports_say_what_to_run(tiny_model: Path, tmp_path: Path, caplog):
    pth = tmp_path / "model.pth"
    shutil.copy(tiny_model, pth)
    assert main(["export", "--model", str(pth)]) == 0
    onnx_path, int8_path = pth.with_suffix(".onnx"), pth.with_suffix(".int8.onnx")
    # An int8 file whose agreement was never measured (as an interrupted older export left it).
    import onnx

    model = onnx.load(str(onnx_path))
    meta = OnnxBackend(onnx_path).metadata
    meta["onnx"]["quantization"] = {"method": "static"}
    set_metadata(model, meta)
    atomic_save(model, int8_path)
    with caplog.at_level(logging.INFO, logger="mediflow.inference.predictor"):
        p = Predictor.load(pth)
    assert p.backend.path == onnx_path
    text = caplog.text
    assert "incomplete" in text and f"mediflow export --model {pth} --int8" in text
    assert "None" not in text
    # A truncated int8 file: recognised, not a crash.
    int8_path.write_bytes(int8_path.read_bytes()[:1000])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mediflow.inference.predictor"):
        assert Predictor.load(pth).backend.path == onnx_path
    assert "not a complete MediFlow export" in caplog.text
    int8_path.unlink()
    # The checkpoint changed after the export (recalibrated): the export is stale.
    ckpt = load_checkpoint(pth)
    ckpt["threshold"] = 0.5
    save_checkpoint(ckpt, pth)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mediflow.inference.predictor"):
        assert Predictor.load(pth).backend.name == "torch"
    assert "stale" in caplog.text and f"mediflow export --model {pth}" in caplog.text
