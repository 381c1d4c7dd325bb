"""The per-epoch training state that `mediflow train --resume` continues from.

Written after every epoch next to the output (`model.pth` -> `model.resume.pth`), like
torchvision's `checkpoint.pth`: the model, optimizer and learning-rate scheduler states, every
random generator the loop draws from, the epoch, the history and the best epoch so far. Only
tensors, numbers, strings, lists and dicts, so it loads with `torch.load(weights_only=True)`.
It is not a model for evaluate/export/serve: the shipped checkpoint stays the one at `--out`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mediflow.checkpoint import as_checkpoint, atomic_torch_save, plain, torch_load_safely, utc_now

TRAINING_STATE_FORMAT = "mediflow-training-state"


def state_path(out: str | Path) -> Path:
    """Where the run writing the model `out` keeps its per-epoch state."""
    out = Path(out)
    stem = out.stem if out.suffix == ".pth" else out.name
    return out.with_name(f"{stem}.resume.pth")


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state the loop draws from: torch (CPU and CUDA), NumPy, Python, and the
    loop's own `generators` (batch order), as tensors and plain numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what rng_state() recorded."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def best_to_state(best: dict[str, Any]) -> dict[str, Any]:
    """The best epoch so far, as the training loop keeps it, in checkpoint-safe types."""
    return {"score": [float(s) for s in best["score"]], "epoch": int(best["epoch"]),
            "val_logits": torch.as_tensor(np.asarray(best["val_logits"], dtype=np.float32)),
            "val_labels": torch.as_tensor(np.asarray(best["val_labels"], dtype=np.int64)),
            "state_dict": best["state_dict"]}


def best_from_state(saved: dict[str, Any]) -> dict[str, Any]:
    """Inverse of best_to_state."""
    return {"score": tuple(saved["score"]), "epoch": saved["epoch"], "val_logits": saved["val_logits"].numpy(),
            "val_labels": saved["val_labels"].numpy(), "state_dict": saved["state_dict"]}


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (model, optimizer, lr_scheduler, rng, epoch, history, best, ...) atomically.
    The optimizer's and scheduler's own state dicts are stored as they are (their integer keys
    name parameters); the rest is made plain (NumPy numbers become Python ones)."""
    kept = ("optimizer", "lr_scheduler")
    body = {k: v if k in kept else plain(v) for k, v in state.items()}
    return atomic_torch_save({**body, "format": TRAINING_STATE_FORMAT, "created": utc_now()}, path)


def is_training_state(ckpt: dict[str, Any]) -> bool:
    """Whether a loaded file is a per-epoch training state rather than a shipped model."""
    return ckpt.get("format") == TRAINING_STATE_FORMAT


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A per-epoch training state or a shipped checkpoint (weights only: training restarts after
    its epoch with a fresh optimizer), loaded with weights_only=True."""
    state = torch_load_safely(path, "no such checkpoint to resume from")
    if isinstance(state, dict) and is_training_state(state):
        return state
    return as_checkpoint(state, path)
