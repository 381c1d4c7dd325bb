"""int8 quantization of an ONNX export, and whether it computes the same decisions as fp32.

Calibration images come from the training part of the checkpoint's patient-grouped split; the
agreement is measured on its validation part and on test_dev; neither touches training weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mediflow.checkpoint import checkpoint_preprocessing, plain
from mediflow.data.dataset import Samples, scan_class_folders
from mediflow.data.images import load_image
from mediflow.data.splits import checkpoint_split
from mediflow.errors import ImageDecodeError, MediFlowError
from mediflow.inference.backends import METADATA_KEY, OnnxBackend, probe_batch
from mediflow.inference.batch import prefetched_batches
from mediflow.inference.onnx_export import atomic_save, quiet, set_metadata
from mediflow.inference.predictor import INT8_MAX_AUC_DROP, INT8_MIN_AGREEMENT, Predictor
from mediflow.models.graph import INPUT_NAME
from mediflow.preprocessing import PreprocessConfig, decode_size, harmonize, normalize_pixels

QUANT_METHOD = ("onnxruntime static QDQ: int8 per-channel weights (full range), uint8 activations, "
                "percentile (99.999) calibration; the stem convolution stays fp32")
# The guard band: this percentile of the int8-vs-fp32 decision-margin error on validation films.
FALLBACK_PERCENTILE = 99.0
# Percentile calibration histograms need equal-sized batches.
CALIBRATION_BATCH = 8


def serving_pixels(paths: Sequence[Path], prep: PreprocessConfig, workers: int = 2) -> np.ndarray:
    """(N, S, S, 3) uint8, S = prep.image_size: each file decoded the way the server decodes uploads
    (JPEG reduced in the DCT domain to about decode_size(prep), see data.images.decode_image) and harmonised
    (preprocessing.harmonize), in the order of `paths`; the model's input once normalised
    (preprocessing.normalize_pixels). `workers`: decoding threads. Raises ImageDecodeError for a file
    that cannot be read or decoded."""
    def one(path: Path) -> np.ndarray:
        return np.asarray(harmonize(load_image(path, draft_size=decode_size(prep)).image, prep))

    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, paths)))


def calibration_batches(pixels: np.ndarray, prep: PreprocessConfig, batch_size: int = CALIBRATION_BATCH
                        ) -> Iterator[np.ndarray]:
    """`pixels`: (N, S, S, 3) uint8, films as the server decodes them (serving_pixels) ->
    the model's float32 inputs (batch_size, 3, S, S), in whole batches (a last partial batch is
    dropped)."""
    for i in range(0, len(pixels) - batch_size + 1, batch_size):
        yield normalize_pixels(pixels[i:i + batch_size], prep)


def quantize_int8(fp32: Path, out: Path, calibration: Iterable[np.ndarray], *, weights_from: Path | None = None,
                  activations: dict[str, tuple[float, int]] | None = None) -> Path:
    """Quantize `fp32` into `out`, carrying its metadata over. `weights_from`: an fp32 ONNX with the
    same graph and other weights (quantization-aware distillation's output) to quantize instead.
    `activations`: {tensor name: (scale, uint8 zero point)} to use instead of what calibration finds
    (the scales the distillation trained through)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, batches: Iterable[np.ndarray]):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {INPUT_NAME: batch.astype(np.float32)}

    meta = OnnxBackend(fp32).metadata
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        with quiet():
            quant_pre_process(str(weights_from or fp32), str(pre), skip_symbolic_shape=True)
            stem = next(n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv")
            quantize_static(str(pre), str(q), Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile,
                            # Full-range weights: 7-bit ones (reduce_range) keep every x86 CPU exact
                            # but moved the calls of ~4% of films. Full range is exact on VNNI CPUs;
                            # elsewhere the predictor notices (GuardedInt8Backend.computes_as_recorded)
                            # and serves fp32. The stem sees the raw image: its error is the largest.
                            reduce_range=False, nodes_to_exclude=[stem],
                            extra_options={"TensorQuantOverrides": {
                                name: [{"scale": np.array(scale, dtype=np.float32),
                                        "zero_point": np.array(zero, dtype=np.uint8)}]
                                for name, (scale, zero) in (activations or {}).items()}})
        model = onnx.load(str(q))
    meta["onnx"]["quantization"] = {"method": QUANT_METHOD}
    set_metadata(model, meta)
    atomic_save(model, out)
    return out


def record_quantization(path: Path, report: dict[str, Any]) -> None:
    """Store the measured agreement with fp32 in the int8 model's metadata."""
    import onnx

    model = onnx.load(str(path))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    meta["onnx"]["quantization"].update(plain(report))
    set_metadata(model, meta)
    atomic_save(model, path)


def onnx_logits(model: Path, films: Samples, *, progress: bool = False) -> tuple[Predictor, np.ndarray, np.ndarray]:
    """The predictor, logits (N, K) and labels (in the model's class order) of an ONNX model on
    `films`, decoded and preprocessed the way the server does."""
    predictor = Predictor.from_onnx(OnnxBackend(model))
    remap = [predictor.class_names.index(n) for n in films.class_names]
    labels = np.asarray([remap[y] for y in films.labels])
    from tqdm import tqdm

    chunks = []
    batches = prefetched_batches(films.paths, lambda p: predictor.preprocess_array(predictor.load_image(p).image), 64)
    for batch in tqdm(batches, desc=f"score {model.name}", total=-(-len(films) // 64), disable=not progress):
        bad = [x for _, x in batch if isinstance(x, ImageDecodeError)]
        if bad:
            raise MediFlowError(f"image unreadable: {bad[0]}")
        chunks.append(predictor.backend.run(np.stack([x for _, x in batch]))["logits"])
    return predictor, np.concatenate(chunks), labels


# refine(fp32 export, its post-training int8 model, the training films' serving_pixels, scratch folder) ->
# (an fp32 ONNX of the same graph with weights to quantize instead, activation scales to use, a report);
# training/quantization_aware.py's `int8_refiner` (inference does not import training).
Refiner = Callable[[Path, Path, np.ndarray, Path], tuple[Path, dict[str, tuple[float, int]], dict[str, Any]]]


def partial_path(out: Path) -> Path:
    """Where int8_export builds `out` until it is measured and complete (a hidden name beside it)."""
    return out.with_name(f".{out.name}.partial")


def int8_export(ckpt: dict[str, Any], fp32: Path, out: Path, data: str | Path, *, n_calibration: int = 200,
                progress: bool = False, refine: Refiner | None = None,
                say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Quantize, then accept the int8 model only where it computes the same decisions as the fp32
    one: with the checkpoint's own calibration and operating point (no refit), its calls must
    agree with fp32's on >= INT8_MIN_AGREEMENT of the validation split plus the films in
    `data`/test_dev (when present), and its AUC on test_dev (validation when there is no test_dev)
    must be within INT8_MAX_AUC_DROP of fp32's. The report is stored in the int8 file; the
    predictor serves it by default only when `accepted`. `refine`: after post-training quantization,
    replace the weights (quantization-aware distillation on the training films) and quantize again
    with the activation scales it returns; its report goes under `distillation`.

    The int8 model is built under partial_path(out) and renamed to `out` only once measured: an
    interrupted export leaves any earlier `out` as it was and no half-made one. `say`: one line per
    stage, for the user."""
    work = partial_path(out)
    try:
        report = _int8_export(ckpt, fp32, work, data, n_calibration=n_calibration, progress=progress,
                              refine=refine, say=say)
        os.replace(work, out)
    finally:
        if work.exists():
            work.unlink()
    return report


def _int8_export(ckpt: dict[str, Any], fp32: Path, out: Path, data: str | Path, *, n_calibration: int,
                 progress: bool, refine: Refiner | None, say: Callable[[str], None]) -> dict[str, Any]:
    # Imported here: the metrics need scikit-learn, which the serving path (core install) lacks.
    from mediflow.metrics import compute_metrics

    train, val = checkpoint_split(ckpt, data)
    test_dir = Path(data) / "test_dev"
    sets = {"validation": val}
    if test_dir.is_dir():
        sets["test_dev"] = scan_class_folders(test_dir)
    prep = checkpoint_preprocessing(ckpt)
    rng = np.random.default_rng(int(ckpt.get("seed") or 0))
    pick = sorted(rng.choice(len(train), size=min(n_calibration, len(train)), replace=False))
    stages = 4 if refine is not None else 3
    say(f"int8 1/{stages}: post-training quantization, calibrated on {len(pick)} training films")
    # Decoded once (200 films, ~30 MB): with distillation, both quantizations calibrate on them.
    calibration = serving_pixels([train.paths[i] for i in pick], prep)
    quantize_int8(fp32, out, calibration_batches(calibration, prep))
    distillation = None
    if refine is not None:
        say(f"int8 2/{stages}: quantization-aware distillation: decoding {len(train)} training films, then training "
            "(a progress bar with its estimate follows)")
        with tempfile.TemporaryDirectory() as tmp:
            weights, activations, distillation = refine(fp32, out, serving_pixels(train.paths, prep), Path(tmp))
            quantize_int8(fp32, out, calibration_batches(calibration, prep), weights_from=weights,
                          activations=activations)
    report: dict[str, Any] = {"n_calibration": len(pick) // CALIBRATION_BATCH * CALIBRATION_BATCH,
                              "min_agreement": INT8_MIN_AGREEMENT, "max_auc_change": INT8_MAX_AUC_DROP,
                              "data": str(data)}
    if distillation is not None:
        report["distillation"] = distillation
    keys = ("auc", "accuracy", "sensitivity", "specificity")
    say(f"int8 {stages - 1}/{stages}: scoring fp32 and int8 on " + " and ".join(f"{name} ({len(films)} films)"
                                                                        for name, films in sets.items()))
    scored = {name: (onnx_logits(fp32, films, progress=progress), onnx_logits(out, films, progress=progress)[1])
              for name, films in sets.items()}
    # The guard band, from validation films only: the 99th percentile of how far int8 moves an
    # image's distance from its call. Images int8 puts inside it are re-run in fp32 when served.
    p32 = scored["validation"][0][0]
    rule = p32.rule
    err = np.abs(rule.margin(scored["validation"][1]) - rule.margin(scored["validation"][0][1]))
    band = float(np.percentile(err, FALLBACK_PERCENTILE))
    report["fallback_band"] = band
    agree, n = 0, 0
    for name, ((p32, z32, labels), z8) in scored.items():
        near = np.abs(rule.margin(z8)) < band
        served = np.where(near[:, None], z32, z8)  # what GuardedInt8Backend computes
        probs32, probs8, probs_s = (p32.probabilities_from_logits(z) for z in (z32, z8, served))
        d32, d8, ds = (p32.decide(pr) for pr in (probs32, probs8, probs_s))
        posname = p32.class_names[p32.pos] if p32.pos is not None else None
        m32, m8, ms = (compute_metrics(labels, pr, p32.class_names, threshold=p32.threshold, positive_class=posname)
                       for pr in (probs32, probs8, probs_s))
        report[name] = {"n": len(labels), "decision_agreement": float(np.mean(ds == d32)),
                        "int8_alone_agreement": float(np.mean(d8 == d32)), "fp32_fraction": float(near.mean()),
                        "fp32": {k: m32.get(k) for k in keys}, "int8": {k: ms.get(k) for k in keys},
                        "int8_alone": {k: m8.get(k) for k in keys}, "auc_change": ms["auc"] - m32["auc"]}
        agree, n = agree + int(np.sum(ds == d32)), n + len(labels)
    report["validation"]["same_files_as_training"] = val.file_list_sha256() == ckpt.get("val_file_list_sha256")
    judged = report.get("test_dev") or report["validation"]
    report["auc_judged_on"] = "test_dev" if "test_dev" in report else "validation"
    report["auc_change"] = judged["auc_change"]
    report["decision_agreement"] = agree / n
    report["accepted"] = bool(report["decision_agreement"] >= INT8_MIN_AGREEMENT
                              and abs(report["auc_change"]) <= INT8_MAX_AUC_DROP)
    # What this CPU computes on a fixed input: a CPU that computes other logits is not served int8.
    q8 = OnnxBackend(out)
    report["probe_logits"] = q8.run(probe_batch(q8.image_size))["logits"].tolist()
    say(f"int8 {stages}/{stages}: recording the measured agreement in the model file")
    record_quantization(out, report)
    return report
