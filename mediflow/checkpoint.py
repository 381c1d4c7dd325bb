"""Saving and loading MediFlow checkpoints.

A checkpoint holds only tensors, numbers, strings, lists and dicts, and is always loaded with
`torch.load(..., weights_only=True)`: a checkpoint from elsewhere cannot run code.

Keys: those of the original design's checkpoint (`epoch`, `state_dict`, `class_names`, `best_val_acc`,
`architecture`) plus
`preprocessing`, `positive_class`, `threshold`, `temperature`, `val_metrics`, `train_config`,
`seed`, `versions`, `file_list_sha256`, `created`; after `mediflow calibrate` also `weights_sha256`
(see weights_sha256()). An ensemble is `{"format": ENSEMBLE_FORMAT,
"members": [checkpoint, ...], ...}` with its own threshold and temperature over averaged members.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mediflow.errors import CheckpointError
from mediflow.preprocessing import PreprocessConfig

CHECKPOINT_FORMAT = "mediflow-checkpoint"
ENSEMBLE_FORMAT = "mediflow-ensemble"
FORMAT_VERSION = 1


# torch is imported inside the functions that need it, so that reading `ENSEMBLE_FORMAT` or
# hashing a file (the ONNX serving path) does not load torch.


def library_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    from mediflow import __version__

    versions = {
        "mediflow": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        import timm

        versions["timm"] = timm.__version__
    except ImportError:
        pass
    return versions


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write atomically so an interrupted save never leaves a half-written model in place."""
    ckpt.setdefault("format", CHECKPOINT_FORMAT)
    ckpt.setdefault("format_version", FORMAT_VERSION)
    ckpt.setdefault("created", utc_now())
    ckpt.setdefault("versions", library_versions())
    return atomic_torch_save(plain(ckpt), path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` through a temporary file, so an interrupted save never leaves
    a half-written file in place."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plain(obj: Any) -> Any:
    """Only types `weights_only=True` accepts: numpy scalars/arrays and version objects become
    Python numbers, lists and strings; tensors stay tensors."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None:
        return None
    for base in (bool, str, int, float):  # bool before int: bool is an int subclass
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def torch_load_safely(path: str | Path, missing: str = "no such model file") -> Any:
    """What `path` holds, loaded with torch.load(weights_only=True) on the CPU. Raises
    CheckpointError ("PATH: `missing`" when there is no file; "not a loadable MediFlow checkpoint"
    for anything weights_only refuses or cannot read)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals: all "not a safe checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable MediFlow checkpoint ({first[:200]})") from None


def as_checkpoint(obj: Any, path: str | Path) -> dict[str, Any]:
    """`obj` (loaded from `path`) as a MediFlow checkpoint or ensemble dict; raises CheckpointError
    when it is neither."""
    if not isinstance(obj, dict) or obj.get("format") not in (CHECKPOINT_FORMAT, ENSEMBLE_FORMAT):
        if isinstance(obj, dict) and {"state_dict", "architecture", "class_names"} <= obj.keys():
            obj.setdefault("format", CHECKPOINT_FORMAT)  # a bare checkpoint as the original design wrote it
        else:
            raise CheckpointError(f"{path}: not a MediFlow checkpoint (missing architecture/class_names/state_dict)")
    return obj


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint (or ensemble) at `path`, loaded with weights_only=True; raises CheckpointError."""
    return as_checkpoint(torch_load_safely(path), path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(ckpt: dict[str, Any], file_sha: str) -> str:
    """The identity of a checkpoint's weights: the SHA-256 of the file they were first saved in.
    Recalibrating (`mediflow calibrate`) rewrites the file but not the weights and records this in
    `weights_sha256`; what belongs to the weights (the input check's statistics) is keyed to it."""
    return str(ckpt.get("weights_sha256") or file_sha)


def checkpoint_members(ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    """The single-model checkpoints inside `ckpt`: itself, or an ensemble's members."""
    return list(ckpt["members"]) if ckpt.get("format") == ENSEMBLE_FORMAT else [ckpt]


def checkpoint_preprocessing(ckpt: dict[str, Any]) -> PreprocessConfig:
    """The preprocessing `ckpt`'s (first) model was trained with: the defaults when none is stored.
    An ensemble's members share one (graph.build_graph refuses members that do not)."""
    return PreprocessConfig.from_dict(checkpoint_members(ckpt)[0].get("preprocessing") or {})
