"""Backends: what runs the inference graph (models/graph.py) on a preprocessed batch.

- `OnnxBackend`: ONNX Runtime on an exported graph; does not import torch (the server's memory).
- `TorchBackend`: the same graph in eager PyTorch, built from a checkpoint; heatmaps by true
  Grad-CAM through pytorch-grad-cam.

Both take a float32 batch (N, 3, S, S) and return named outputs as numpy arrays.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mediflow.errors import CheckpointError

METADATA_KEY = "mediflow"
# Picks the class to explain from one image's logits (the predictor's decision rule).
ClassChooser = Callable[[np.ndarray], int]


class Backend(Protocol):
    name: str

    def run(self, batch: np.ndarray, outputs: Sequence[str] = ("logits",)) -> dict[str, np.ndarray]:
        """Named graph outputs ('logits', 'features', 'cam') for a preprocessed batch."""
        ...

    def heatmaps(self, batch: np.ndarray, choose: ClassChooser) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Logits (N, K), one map per image (N, h, w) scaled to [0, 1], and the class each map explains,
        from one pass."""
        ...


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def scale_map(cam: np.ndarray) -> np.ndarray:
    """ReLU, then min-max to [0, 1] (pytorch-grad-cam's scaling, so CAM and Grad-CAM compare)."""
    cam = np.maximum(cam.astype(np.float32), 0)
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-7)


def serving_threads() -> int:
    """Intra-op threads for a server answering one image at a time: all cores while requests follow
    one another, spinning only while a run lasts, one after an idle spell (see OnnxBackend's
    `serving`). The server runs one inference at a time, so nothing else needs the cores while it
    does. Measured on a 2-core AVX2 VM through the HTTP API (benchmarks/serving_benchmark.py), int8,
    back to back: 2 threads p50 22.2 ms vs 1 thread 26.8 ms. (With threads that kept spinning after
    a run, 2 had been slower than 1: idle workers burnt the core that decodes the next upload.)"""
    return available_threads()


# When the process's last model run ended (time.perf_counter(), any OnnxBackend): whether the CPU's
# cores have just been busy or have idled, for serving backends (OnnxBackend.run).
_last_run_end = 0.0


class OnnxBackend:
    name = "onnx"
    # serving: a run that starts this long (seconds) after the process's last one ended takes the
    # single-thread session.
    IDLE_AFTER_S = 0.1

    def __init__(self, path: str | Path, *, threads: int | None = None, serving: bool = False):
        """`threads`: intra-op threads (default: all cores). Worker threads busy-wait for the next
        operator while a run lasts (waking a sleeping thread for each of the graph's ~100 operators
        costs more than the operator on a small batch), and, for batches that follow one another,
        after it returns.

        `serving`: tuned for a server answering one image at a time, with pauses between uploads.
        - The workers stop spinning when a run returns (ONNX Runtime's `session.force_spinning_stop`);
          they would take the CPU that decodes the next upload. On a 2-core AVX-512 VM, through the
          HTTP API: spinning within runs only took the int8 model from 4.7 to 3.7 ms p50 against not
          spinning at all (benchmarks/serving_benchmark.py).
        - A run that starts after the process's models have been idle for IDLE_AFTER_S runs on one
          thread (a second session of the same file). On that VM the int8 model took 2.7 ms on two
          threads back to back, but 8-9 ms when the runs were 10 ms or more apart; on one thread,
          4.7 ms either way. Through the API with 0.5 s between uploads: 21.1 ms p50 on two
          threads, 16.9 ms on one; back to back, 13.7 vs 15.7 ms."""
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such model file")
        self.threads = threads or available_threads()
        self.session = self._session(self.threads, serving)
        self._after_idle = self._session(1, serving) if serving and self.threads > 1 else None
        self.last_run_threads = 0  # how many threads the last run had (0: none yet)
        self.metadata = read_session_metadata(self.session, self.path)
        self.input_name = self.session.get_inputs()[0].name
        # Square images of this side (pixels); the export fixes it, only the batch axis is free.
        self.image_size = int(self.session.get_inputs()[0].shape[-1])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        if serving:
            # A session's first run allocates its buffers: here, not on a doctor's upload (the
            # one-thread session, and an fp32 original that only re-runs a few images, would
            # otherwise wait until their first real image). Not timed: it leaves the idle clock alone.
            x = np.zeros((1, *self.session.get_inputs()[0].shape[1:]), dtype=np.float32)
            for session in (self.session, self._after_idle):
                if session is not None:
                    session.run(None, {self.input_name: x})

    def _session(self, threads: int, serving: bool):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if serving:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            return ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # protobuf/format errors: the user's file, not our bug
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({first[:200]})") from None

    def run(self, batch: np.ndarray, outputs: Sequence[str] = ("logits",)) -> dict[str, np.ndarray]:
        global _last_run_end
        x = np.ascontiguousarray(batch, dtype=np.float32)
        session, self.last_run_threads = self.session, self.threads
        if self._after_idle is not None and time.perf_counter() - _last_run_end >= self.IDLE_AFTER_S:
            session, self.last_run_threads = self._after_idle, 1
        values = session.run(list(outputs), {self.input_name: x})
        _last_run_end = time.perf_counter()
        return dict(zip(outputs, values))

    def heatmaps(self, batch: np.ndarray, choose: ClassChooser) -> tuple[np.ndarray, np.ndarray, list[int]]:
        return cam_heatmaps(self.run(batch, ("logits", "cam")), choose)


def cam_heatmaps(out: dict[str, np.ndarray], choose: ClassChooser) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Logits (N, K), maps (N, h, w) in [0, 1] and explained classes from a graph's `logits` and `cam`
    outputs (cam: (N, K, h, w) class activation maps)."""
    classes = [choose(row) for row in out["logits"]]
    maps = np.stack([scale_map(out["cam"][i, c]) for i, c in enumerate(classes)])
    return out["logits"], maps, classes


# A fixed input the int8 export records its own logits on (see GuardedInt8Backend.computes_as_recorded).
PROBE_SEED = 20261130


def probe_batch(size: int) -> np.ndarray:
    """(2, 3, size, size) float32: uniform noise on the model's normalised input range [-1, 1] and a
    smooth gradient with mild noise. Deterministic (numpy's PCG64 with PROBE_SEED) on every platform."""
    rng = np.random.default_rng(PROBE_SEED)
    noise = rng.uniform(-1.0, 1.0, (3, size, size))
    ramp = np.linspace(-1.0, 1.0, size)[None, :, None] * np.linspace(-1.0, 1.0, size)[None, None, :]
    smooth = np.clip(np.repeat(ramp, 3, axis=0) + rng.normal(0.0, 0.1, (3, size, size)), -1.0, 1.0)
    return np.stack([noise, smooth]).astype(np.float32)


class GuardedInt8Backend:
    """An int8 ONNX model that hands the images near the operating point to its fp32 original.

    Every batch runs in int8; the images whose int8 logits lie within `band` (calibrated logit units,
    `margin(logits)` from the decision rule) of changing the call run again in fp32, and those rows
    are replaced. The export measured the int8-vs-fp32 error on validation films and set `band` to
    its 99th percentile (quantize.py), so the calls are fp32's while most images take the int8 path.
    Outputs other than the requested ones are never mixed between the two models."""

    name = "onnx"

    def __init__(self, int8: OnnxBackend, fp32: OnnxBackend, margin: Callable[[np.ndarray], np.ndarray],
                 band: float):
        self.int8, self.fp32, self.margin, self.band = int8, fp32, margin, float(band)
        self.path, self.metadata, self.providers = int8.path, int8.metadata, int8.providers
        self.output_names = int8.output_names
        self.images = 0  # images seen, and those re-run in fp32 (for the benchmark's fallback rate)
        self.deferred = 0

    def run(self, batch: np.ndarray, outputs: Sequence[str] = ("logits",)) -> dict[str, np.ndarray]:
        want = tuple(dict.fromkeys(("logits", *outputs)))
        out = self.int8.run(batch, want)
        near = np.flatnonzero(np.abs(self.margin(out["logits"])) < self.band)
        self.images += len(out["logits"])
        if near.size:
            self.deferred += int(near.size)
            redo = self.fp32.run(np.asarray(batch)[near], want)
            for k in want:  # ONNX Runtime returns fresh arrays: overwrite those rows in place
                out[k][near] = redo[k]
        return {k: out[k] for k in outputs}

    def heatmaps(self, batch: np.ndarray, choose: ClassChooser) -> tuple[np.ndarray, np.ndarray, list[int]]:
        return cam_heatmaps(self.run(batch, ("logits", "cam")), choose)

    @staticmethod
    def computes_as_recorded(int8: OnnxBackend, recorded: Sequence[Sequence[float]], atol: float = 1e-3) -> bool:
        """Whether this CPU computes the int8 model the export measured: its logits on `probe_batch`
        must match the ones recorded at export within `atol`. Full-range int8 weights overflow the
        16-bit pair sums of ONNX Runtime's kernels on x86 CPUs without VNNI (AVX2, AVX-512 without
        VNNI), which then compute another model (ONNX Runtime's quantization docs, "reduce_range")."""
        got = int8.run(probe_batch(int8.image_size))["logits"]
        want = np.asarray(recorded, dtype=np.float32)
        return got.shape == want.shape and bool(np.allclose(got, want, rtol=0.0, atol=atol))


def pooled_features(fmap: np.ndarray) -> np.ndarray:
    """The graph's `features` output (N, C, h, w) -> (N, C) global average pool: what the linear
    head sees (before dropout), and what the input check measures."""
    return np.asarray(fmap, dtype=np.float32).mean(axis=(2, 3))


def read_session_metadata(session: Any, path: Path) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: an ONNX model without MediFlow metadata; export it with `mediflow export`")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: MediFlow metadata in this ONNX model is not valid JSON") from None


class TorchBackend:
    name = "torch"

    def __init__(self, ckpt: dict[str, Any], *, device: str = "cpu"):
        import torch

        from mediflow.models.graph import load_graph

        self.device = torch.device(device)
        self.graph = load_graph(ckpt, self.device)

    def run(self, batch: np.ndarray, outputs: Sequence[str] = ("logits",)) -> dict[str, np.ndarray]:
        from mediflow.models.graph import run_graph

        return run_graph(self.graph, batch, outputs, self.device)

    def heatmaps(self, batch: np.ndarray, choose: ClassChooser) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """True Grad-CAM (pytorch-grad-cam) on the last feature map, for the class `choose` picks from
        the same forward pass."""
        from pytorch_grad_cam import GradCAM

        from mediflow.models.graph import graph_input

        classes: list[int] = []

        def target(logits_row):
            classes.append(choose(logits_row.detach().float().cpu().numpy()))
            return logits_row[classes[-1]]

        # A fresh GradCAM per call: its hooks stay on the model until released, and would otherwise
        # keep every plain forward pass's activations.
        with GradCAM(model=_LogitsOnly(self.graph), target_layers=self.graph.target_layers()) as cam:
            maps = cam(input_tensor=graph_input(batch, self.device), targets=[target] * len(batch))
            logits = cam.outputs.detach().float().cpu().numpy()
        return logits, np.asarray(maps, dtype=np.float32), classes


def _LogitsOnly(graph):
    """pytorch-grad-cam wants a module returning logits alone."""
    from torch import nn

    class LogitsOnly(nn.Module):
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, x):
            return self.g(x)[0]

    return LogitsOnly(graph)
