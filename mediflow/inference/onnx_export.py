"""Checkpoint -> self-describing ONNX model (models/graph.py's outputs, the checkpoint's metadata inside).

The metadata (class names, threshold, temperature, preprocessing, architecture, validation
metrics, training facts, and the source checkpoint's SHA-256) is stored as JSON under the
`mediflow` key of the model's metadata_props, so a server needs only the .onnx file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mediflow.checkpoint import checkpoint_preprocessing, file_sha256, plain, utc_now
from mediflow.errors import MediFlowError
from mediflow.inference.backends import METADATA_KEY, OnnxBackend
from mediflow.models.graph import INPUT_NAME, OUTPUT_NAMES, InferenceGraph, build_graph

log = logging.getLogger(__name__)

OPSET = 18
# Exported outputs must reproduce PyTorch's within this (the acceptance bound).
MAX_ABS_DIFF = 1e-4


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.onnx's optimizer and onnxruntime.quantization log hundreds of INFO lines to the root
    logger (and print to stdout); keep the command's own output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def without_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's metadata: everything but tensors (members' too)."""
    meta = {k: v for k, v in ckpt.items() if k != "state_dict" and not isinstance(v, torch.Tensor)}
    if "members" in meta:
        meta["members"] = [without_weights(m) for m in meta["members"]]
    return plain(meta)


def export_metadata(ckpt: dict[str, Any], source: Path) -> dict[str, Any]:
    meta = without_weights(ckpt)
    meta["source_checkpoint"] = {"file": source.name, "sha256": file_sha256(source)}
    meta["onnx"] = {"input": INPUT_NAME, "outputs": list(OUTPUT_NAMES), "opset": OPSET, "exported": utc_now(),
                    "torch": str(torch.__version__), "quantization": None}
    return meta


def atomic_save(model, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def set_metadata(model, meta: dict[str, Any]) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)


def export_graph(graph: InferenceGraph, image_size: int, out: Path, meta: dict[str, Any]) -> Path:
    """Trace `graph` (eval mode: dropout off, BatchNorm on running statistics) with a dynamic batch axis."""
    import onnx

    graph.eval()
    example = torch.randn(2, 3, image_size, image_size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "graph.onnx"
        torch.onnx.export(graph, (example,), str(raw), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=OPSET,
                          dynamo=True, external_data=False, verbose=False)
        model = onnx.load(str(raw))
    set_metadata(model, meta)
    atomic_save(model, out)
    return out


def max_abs_diffs(graph: InferenceGraph, onnx_path: Path, batch: np.ndarray) -> dict[str, float]:
    """Largest |ONNX - PyTorch| per output on `batch`: absolute for the logits; for the feature map
    and CAM, relative to the output's largest magnitude when that exceeds 1 (a fine-tuned network's
    activations reach ~20, where float32 rounding alone differs by more than 1e-4)."""
    with torch.inference_mode():
        ref = dict(zip(OUTPUT_NAMES, (t.numpy() for t in graph.eval()(torch.from_numpy(batch)))))
    got = OnnxBackend(onnx_path).run(batch, OUTPUT_NAMES)
    diffs = {}
    for k in OUTPUT_NAMES:
        scale = 1.0 if k == "logits" else max(1.0, float(np.abs(ref[k]).max()))
        diffs[k] = float(np.abs(got[k] - ref[k]).max()) / scale
    return diffs


def export_checkpoint(ckpt: dict[str, Any], source: Path, out: Path, *, check: bool = True) -> dict[str, float]:
    """Export and check the export against PyTorch on random inputs; returns the differences."""
    graph = build_graph(ckpt)
    prep = checkpoint_preprocessing(ckpt)
    export_graph(graph, prep.image_size, out, export_metadata(ckpt, source))
    if not check:
        return {}
    # A batch size the trace never saw, so a batch axis baked in as a constant would fail here.
    batch = np.random.default_rng(0).standard_normal((3, 3, prep.image_size, prep.image_size)).astype(np.float32)
    diffs = max_abs_diffs(graph, out, batch)
    if max(diffs.values()) > MAX_ABS_DIFF:
        out.unlink(missing_ok=True)
        raise MediFlowError(f"the ONNX export does not reproduce PyTorch (differences {diffs}); not written")
    return diffs
