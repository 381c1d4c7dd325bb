"""The core install and its extras: what `pip install .` declares, what the commands do without an
extra's packages (real `mediflow` processes in which those packages cannot be imported).

The core install itself is built in a fresh venv by CI (.ci/core-install); here the extras'
packages are hidden from a process of the test environment instead, which is quick.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import FULLRES, REPO, jpeg_bytes, xray_like

from mediflow import cli

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# Packages of the extras, as top-level import names (what the hidden-package processes refuse).
EXTRA_MODULES = sorted(cli.EXTRA_OF_MODULE)

# Runs `mediflow ARGS...` with every extra's packages unimportable, as on the core install.
WITHOUT_EXTRAS = f"""
import sys
HIDDEN = {EXTRA_MODULES!r}

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Hide())
from mediflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


def mediflow_without_extras(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def test_core_dependencies_hold_nothing_for_training_or_federation():
    core = {requirement_name(r) for r in PYPROJECT["dependencies"]}
    heavy = {"torch", "torchvision", "timm", "flwr", "ray", "opacus", "grad-cam", "matplotlib", "scikit-learn",
             "onnx", "onnxscript", "psycopg", "pynetdicom", "highdicom"}
    assert core & heavy == set()
    assert {"onnxruntime", "fastapi", "pydicom", "sqlalchemy"} <= core


def test_extras_are_declared_and_test_installs_them_all():
    extras = PYPROJECT["optional-dependencies"]
    assert set(cli.EXTRA_OF_MODULE.values()) <= set(extras)
    assert "mediflow[all]" in extras["test"]
    assert extras["all"] == ["mediflow[train,federated,postgres,dicom]"]
    assert "tomli-w" in {requirement_name(r).replace("_", "-") for r in extras["federated"]}


@pytest.mark.parametrize("args,extra", [
    (["train", "--data", "nowhere", "--out", "m.pth"], "train"),
    (["train", "--help"], "train"),
    (["evaluate", "--model", "m.pth", "--data", "nowhere", "--out", "r"], "train"),
    (["export", "--model", "m.pth", "--onnx", "m.onnx"], "train"),
])
def test_a_command_without_its_extra_names_it_in_one_line(args: list[str], extra: str):
    out = mediflow_without_extras(*args)
    assert out.returncode == cli.MISSING_EXTRA_EXIT, out.stderr
    assert out.stderr.splitlines() == [f"mediflow {args[0]} needs the {extra} extra (torch is not installed): "
                                       f"pip install 'mediflow[{extra}]'"]


@pytest.mark.slow
def test_analyze_and_predict_run_without_any_extra(tmp_path: Path):
    """The bundled model through its ONNX exports: what the core install is for. Real films get a
    finding; without ../shared/data, synthetic ones may be refused by the input check instead (which
    ran the model too)."""
    films = tmp_path / "films"
    films.mkdir()
    real = sorted(FULLRES.glob("*/*.jpeg"))[:2] if FULLRES.is_dir() else []
    for path in real:
        (films / path.name).write_bytes(path.read_bytes())
    if not real:
        for i in range(2):
            (films / f"film{i}.jpeg").write_bytes(jpeg_bytes(xray_like(i, i, 256)))
    out = mediflow_without_extras("analyze", str(films), "--out", str(tmp_path / "r.csv"), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 2 and not any(r["error"] for r in rows)
    assert all(r["prediction"] if real else (r["prediction"] or r["input_check"] == "rejected") for r in rows)
    out = mediflow_without_extras("predict", str(sorted(films.iterdir())[0]))
    answer = json.loads(out.stdout)
    assert answer["disclaimer"] if real else ("prediction" in answer or answer["input_check"]["status"] == "rejected")
    assert out.returncode == (0 if "prediction" in answer else 1), out.stderr[-2000:]


def test_a_missing_module_of_no_extra_keeps_its_traceback(monkeypatch):
    """Only the extras' packages are reported as a missing extra; any other missing module is a bug."""
    from mediflow.commands import db

    def broken(args):
        raise ModuleNotFoundError("No module named 'mediflow_helper'", name="mediflow_helper")

    monkeypatch.setattr(db, "run", broken)
    with pytest.raises(ModuleNotFoundError, match="mediflow_helper"):
        cli.main(["db", "current"])
