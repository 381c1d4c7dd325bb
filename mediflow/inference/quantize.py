"""int8 quantization of an ONNX export, and the validation AUC it costs.

Calibration images come from the training part of the checkpoint's patient-grouped split; the
AUC change is measured on its validation part, so neither touches the held-back test split.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mediflow.checkpoint import checkpoint_members, plain
from mediflow.data.dataset import Samples, grouped_split, resolve_split_dir, scan_class_folders
from mediflow.data.images import load_image
from mediflow.decision import choose_threshold, fit_calibration, softmax
from mediflow.errors import ImageDecodeError, MediFlowError
from mediflow.inference.backends import METADATA_KEY, OnnxBackend
from mediflow.inference.batch import prefetched_batches
from mediflow.inference.graph import INPUT_NAME
from mediflow.inference.onnx_export import atomic_save, quiet, set_metadata
from mediflow.inference.predictor import INT8_MAX_AUC_DROP, Predictor
from mediflow.preprocessing import PreprocessConfig, eval_array

QUANT_METHOD = ("onnxruntime static QDQ: int8 per-channel weights in 7-bit range, uint8 activations, "
                "percentile (99.999) calibration")
# Percentile calibration histograms need equal-sized batches.
CALIBRATION_BATCH = 8


def training_split(ckpt: dict[str, Any], data: str | Path) -> tuple[Samples, Samples]:
    """The checkpoint's own train/validation split of `data`, rebuilt from its seed and settings."""
    first = checkpoint_members(ckpt)[0]
    cfg = ckpt.get("train_config") or first.get("train_config") or {}
    seed = int(ckpt.get("seed", first.get("seed", 0)) or 0)
    samples = scan_class_folders(resolve_split_dir(data, "train"))
    if cfg.get("val_dir"):
        return samples, scan_class_folders(cfg["val_dir"])
    return grouped_split(samples, val_fraction=float(cfg.get("val_fraction") or 0.2), seed=seed)


def calibration_batches(paths: list[Path], prep: PreprocessConfig, batch_size: int = CALIBRATION_BATCH
                        ) -> Iterator[np.ndarray]:
    for i in range(0, len(paths) - batch_size + 1, batch_size):
        yield np.stack([eval_array(load_image(p, draft_size=prep.image_size), prep) for p in paths[i:i + batch_size]])


def quantize_int8(fp32: Path, out: Path, calibration: Iterable[np.ndarray]) -> Path:
    """Quantize `fp32` into `out`, carrying its metadata over."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
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
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(q), Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile,
                            # 7-bit weights: on CPUs without VNNI (AVX2, plain AVX-512) ONNX Runtime's
                            # uint8 x int8 kernels sum pairs in 16 bits and saturate with full-range
                            # weights, so the same file gave other logits there (validation temperature
                            # 0.22 instead of 0.60 on an AVX2 VM). Reduced range cannot saturate, so
                            # every CPU computes the same model.
                            reduce_range=True)
        model = onnx.load(str(q))
    meta["onnx"]["quantization"] = {"method": QUANT_METHOD}
    set_metadata(model, meta)
    atomic_save(model, out)
    return out


def record_quantization(path: Path, report: dict[str, Any], recalibrated: dict[str, Any]) -> None:
    """Store the measured validation change in the model's metadata, with the int8 model's own
    temperature, threshold and validation metrics (`recalibrated`)."""
    import onnx

    model = onnx.load(str(path))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    meta["onnx"]["quantization"].update(plain(report))
    meta.update(plain(recalibrated))
    set_metadata(model, meta)
    atomic_save(model, path)


def validation_logits(model: Path, val: Samples, *, progress: bool = False) -> tuple[Predictor, np.ndarray, np.ndarray]:
    """The predictor, logits (N, K) and labels (in the model's class order) of an ONNX model on `val`."""
    predictor = Predictor.from_onnx(OnnxBackend(model))
    remap = [predictor.class_names.index(n) for n in val.class_names]
    labels = np.asarray([remap[y] for y in val.labels])
    from tqdm import tqdm

    chunks = []
    batches = prefetched_batches(val.paths, lambda p: predictor.preprocess_array(predictor.load_image(p)), 64)
    for batch in tqdm(batches, desc=f"validate {model.name}", total=-(-len(val) // 64), disable=not progress):
        bad = [x for _, x in batch if isinstance(x, ImageDecodeError)]
        if bad:
            raise MediFlowError(f"validation image unreadable: {bad[0]}")
        chunks.append(predictor.backend.run(np.stack([x for _, x in batch]))["logits"])
    return predictor, np.concatenate(chunks), labels


def int8_export(ckpt: dict[str, Any], fp32: Path, out: Path, data: str | Path, *, n_calibration: int = 200,
                progress: bool = False) -> dict[str, Any]:
    """Quantize, then treat the int8 model as the new model it is: fit its temperature and threshold
    on the checkpoint's validation split by the training rule, and report its validation AUC against
    the fp32 model's. AUC ignores temperature and threshold, so the comparison stays fair."""
    # The one import from evaluation/ in inference/: export-time validation only (`mediflow export
    # --int8`), never on the serving path. compute_metrics (scikit-learn) is evaluation's job.
    from mediflow.evaluation.metrics import compute_metrics

    train, val = training_split(ckpt, data)
    prep = PreprocessConfig.from_dict(checkpoint_members(ckpt)[0].get("preprocessing") or {})
    rng = np.random.default_rng(int(ckpt.get("seed") or 0))
    pick = sorted(rng.choice(len(train), size=min(n_calibration, len(train)), replace=False))
    quantize_int8(fp32, out, calibration_batches([train.paths[i] for i in pick], prep))
    p32, z32, labels = validation_logits(fp32, val, progress=progress)
    _, z8, _ = validation_logits(out, val, progress=progress)
    pos = p32.pos
    ensemble = p32.n_members > 1  # an ensemble graph's output is already calibrated (predictor.py)
    temperature, bias = (1.0, None) if ensemble or not ckpt.get("temperature") else fit_calibration(z8, labels)
    probs8, probs32 = softmax(z8, temperature, bias), p32.probabilities_from_logits(z32)
    min_sens = float((ckpt.get("train_config") or {}).get("min_sensitivity", 0.97))
    threshold = None if pos is None else choose_threshold(probs8[:, pos], labels == pos, min_sens)
    posname = p32.class_names[pos] if pos is not None else None
    m32 = compute_metrics(labels, probs32, p32.class_names, threshold=p32.threshold, positive_class=posname)
    m8 = compute_metrics(labels, probs8, p32.class_names, threshold=threshold, positive_class=posname)
    d8 = p32.decide(probs8) if threshold is None else np.where(probs8[:, pos] >= threshold, pos, 1 - pos)
    keys = ("auc", "balanced_accuracy", "sensitivity", "specificity")
    report = {
        "validation": {"n": len(val), "data": str(data),
                       "same_files_as_training": val.file_list_sha256() == ckpt.get("val_file_list_sha256")},
        "n_calibration": len(pick) // CALIBRATION_BATCH * CALIBRATION_BATCH,
        "fp32": {**{k: m32.get(k) for k in keys}, "temperature": p32.temperature, "threshold": p32.threshold},
        "int8": {**{k: m8.get(k) for k in keys}, "temperature": temperature, "threshold": threshold},
        "auc_change": m8["auc"] - m32["auc"],
        "decision_agreement": float(np.mean(d8 == p32.decide(probs32))),
        "max_auc_drop": INT8_MAX_AUC_DROP,
    }
    report["accepted"] = bool(report["auc_change"] > -INT8_MAX_AUC_DROP)
    recalibrated = {"threshold": threshold, "val_metrics": m8}
    if not ensemble:
        recalibrated["temperature"] = temperature
        recalibrated["logit_bias"] = bias
    record_quantization(out, report, recalibrated)
    return report
