"""`GET /api/model/evaluation`: the latest evaluation of the served model, read from the JSON file
`<checkpoint stem>.evaluation.json` that benchmarks/generalization.py writes next to the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import HTTPException

# Suffixes between a checkpoint's stem and its exports (model.pth, model.onnx, model.int8.onnx).
_MODEL_SUFFIXES = (".onnx", ".int8", ".pth", ".pt")


def checkpoint_stem(path: str | Path) -> Path:
    """`dir/model.int8.onnx`, `dir/model.onnx` and `dir/model.pth` -> `dir/model`: the export and
    its checkpoint share one evaluation file."""
    p = Path(path)
    name = p.name
    changed = True
    while changed:
        changed = False
        for suffix in _MODEL_SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name, changed = name[: -len(suffix)], True
    return p.with_name(name)


def evaluation_path(model_path: str | Path) -> Path:
    """Where the evaluation of the model at `model_path` lives."""
    stem = checkpoint_stem(model_path)
    return stem.with_name(stem.name + ".evaluation.json")


def read_evaluation(model_path: str | Path | None) -> dict[str, Any]:
    """The evaluation JSON of the served model as a dict.

    Raises HTTPException 404 (with a `detail` naming the file looked for) when there is none, and
    503 when the file exists but is not a JSON object (a half-written or damaged file)."""
    if not model_path:
        raise HTTPException(404, detail="the serving model has no file path, so no evaluation file to read")
    path = evaluation_path(model_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HTTPException(404, detail=f"no evaluation of this model: {path.name} is not next to the "
                                        "checkpoint (write it with benchmarks/generalization.py)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HTTPException(503, detail=f"evaluation file {path.name} cannot be read ({type(exc).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(503, detail=f"evaluation file {path.name} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise HTTPException(503, detail=f"evaluation file {path.name} does not hold a JSON object")
    return data
