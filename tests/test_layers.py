"""One-way layers: which parts of MediFlow may import which, read from the source (every import
statement, including those inside functions and under TYPE_CHECKING).

Lowest to highest: the foundations (data/, models/, preprocessing, decision, metrics, checkpoint,
errors), then training/ and inference/ side by side (neither imports the other), then evaluation/
(scores models through inference/), then serving/, federated/, the commands and the CLI. The core
install (no torch) relies on this too: serving reaches only what inference/ and the foundations
import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "mediflow"

HIGHER = ("training", "inference", "evaluation", "serving", "federated", "commands", "cli", "store", "dicom_node")
# layer (a sub-package or module of mediflow) -> the layers it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("data", "models", "preprocessing", "decision", "metrics", "checkpoint", "errors"), HIGHER),
    "inference": ("training", "evaluation", "serving", "federated", "commands", "cli", "store", "dicom_node"),
    "training": ("inference", "evaluation", "serving", "federated", "commands", "cli", "store", "dicom_node"),
    "evaluation": ("training", "serving", "federated", "commands", "cli", "store", "dicom_node"),
    "store": ("training", "inference", "evaluation", "serving", "federated", "commands", "cli", "dicom_node"),
}


def layer_of(module: str) -> str | None:
    """'mediflow.inference.predictor' -> 'inference'; None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "mediflow" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file (or in `source`, read as that file),
    relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from mediflow import training` imports the sub-package `training`.
            found += [(node.lineno, f"{module}.{alias.name}" if module == "mediflow" else module)
                      for alias in node.names]
    return found


def package_sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def violations(path: Path, source: str | None = None) -> list[str]:
    own = layer_of(module_name(path))
    return [f"{path.relative_to(REPO)}:{line}: {own} imports {module}"
            for line, module in imported_modules(path, source)
            if own in FORBIDDEN and layer_of(module) in FORBIDDEN[own]]


def test_lower_layers_never_import_higher_ones():
    assert len(package_sources()) > 50  # the walk found the package
    assert [v for path in package_sources() for v in violations(path)] == []


def test_benchmarks_and_harness_import_nothing_from_tests():
    """benchmarks/ and the process harnesses they share with the tests (harness/) stand without tests/:
    no module of tests/ or its folders, and tests/ never put on sys.path."""
    tests = REPO / "tests"
    test_modules = {p.stem for p in tests.rglob("*.py")} | {p.name for p in tests.iterdir() if p.is_dir()}
    found = []
    for path in sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "harness").glob("*.py")]):
        name = path.relative_to(REPO)
        text = path.read_text(encoding="utf-8")
        if '"tests"' in text or "'tests'" in text:
            found.append(f"{name}: puts tests/ on sys.path")
        found += [f"{name}:{line}: imports {module}" for line, module in imported_modules(path)
                  if module.split(".")[0] in test_modules | {"tests", "conftest"}]
    assert found == []


@pytest.mark.parametrize("source,expected", [
    ("import mediflow.serving.app\n", "inference imports mediflow.serving.app"),
    ("def f():\n    from mediflow.training.train import train\n", "inference imports mediflow.training.train"),
    ("from ..evaluation import metrics\n", "inference imports mediflow.evaluation"),
    ("from mediflow import training\n", "inference imports mediflow.training"),
    ("from mediflow.models.graph import build_graph\nfrom . import backends\n", None),
])
def test_the_check_reads_function_level_and_relative_imports(source: str, expected: str | None):
    """Every form of import counts: a check that found nothing would pass on any code."""
    found = violations(PACKAGE / "inference" / "probe.py", source)
    assert found == ([] if expected is None else [f"mediflow/inference/probe.py:{source.count(chr(10))}: {expected}"])
