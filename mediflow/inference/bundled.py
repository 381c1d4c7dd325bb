"""The model that ships inside the package (the design's `mediflow_lungs_best.pth`)."""

from __future__ import annotations

from pathlib import Path

from mediflow.errors import CheckpointError

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
BUNDLED_MODEL = BUNDLED_DIR / "mediflow_lungs_best.pth"


def default_model_path(path: str | Path | None = None) -> Path:
    """`path` when given, else the bundled model."""
    if path:
        return Path(path)
    if not BUNDLED_MODEL.is_file():
        raise CheckpointError(f"no --model given and the bundled model {BUNDLED_MODEL} is missing")
    return BUNDLED_MODEL
