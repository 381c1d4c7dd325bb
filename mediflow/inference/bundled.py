"""The model that ships inside the package (`mediflow_lungs_best.pth`, the file name the original design gave it)."""

from __future__ import annotations

from pathlib import Path

from mediflow.errors import CheckpointError

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
BUNDLED_MODEL = BUNDLED_DIR / "mediflow_lungs_best.pth"


# Exports of the bundled model (`mediflow export`); the predictor serves them when they match it.
BUNDLED_EXPORTS = (BUNDLED_MODEL.with_suffix(".int8.onnx"), BUNDLED_MODEL.with_suffix(".onnx"))


def default_model_path(path: str | Path | None = None) -> Path:
    """`path` when given, else the bundled model (its checkpoint, or an export shipped alone)."""
    if path:
        return Path(path)
    for candidate in (BUNDLED_MODEL, *BUNDLED_EXPORTS):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no --model given and the bundled model {BUNDLED_MODEL} is missing")
