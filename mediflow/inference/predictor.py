"""Load a model (checkpoint or ONNX export) and turn images into the API's response.

Probabilities are softmax(logits / temperature + bias), averaged over ensemble members; the decision is
PNEUMONIA when its probability reaches the checkpoint's validation-chosen threshold, and responses report
probabilities centred on that operating point (mediflow/decision.py, docs/serving.md).

A backend (backends.py) runs the network: `onnx` (ONNX Runtime, the default when an export of the
checkpoint is available) or `torch`. Nothing on the ONNX path imports torch, which alone would
take ~500 MB of the server's memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mediflow import DISCLAIMER
from mediflow.checkpoint import checkpoint_members, file_sha256, load_checkpoint, weights_sha256
from mediflow.data.decoded import DecodedImage
from mediflow.data.images import decode_image, load_image
from mediflow.data.preview import preview_data_url
from mediflow.decision import DecisionRule
from mediflow.errors import CheckpointError, MediFlowError
from mediflow.inference.backends import (
    Backend,
    GuardedInt8Backend,
    OnnxBackend,
    TorchBackend,
    available_threads,
    cam_heatmaps,
    pooled_features,
)
from mediflow.inference.bundled import default_model_path
from mediflow.inference.input_check import InputCheck, InputRejected, Reason, header_age_known, rejected, summarize
from mediflow.preprocessing import PreprocessConfig, decode_size, eval_array

if TYPE_CHECKING:
    import torch

DEFAULT_REVIEW_BELOW = 0.70
BACKENDS = ("auto", "onnx", "torch")
# An int8 export is served by default only when, with the fp32 model's calibration and operating
# point, its calls agree with fp32's on at least this share of validation + test_dev films and its
# test_dev AUC is within INT8_MAX_AUC_DROP of fp32's (a normal film the int8 model called
# PNEUMONIA 0.955 where fp32 said 0.418).
INT8_MIN_AGREEMENT = 0.995
INT8_MAX_AUC_DROP = 0.002

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    architecture: str
    version: str
    sha256: str
    path: str
    # The weights' identity (checkpoint.weights_sha256): equal to sha256 unless recalibrated.
    weights_sha256: str = ""

    def ref(self) -> dict[str, str]:
        """How a finding names its model: the `model` of every response, study and results file."""
        return {"architecture": self.architecture, "version": self.version, "sha256": self.sha256}


def onnx_candidates(checkpoint: Path) -> list[Path]:
    """Where `mediflow export` puts a checkpoint's exports, in order of preference."""
    return [checkpoint.with_suffix(".int8.onnx"), checkpoint.with_suffix(".onnx")]


def matching_export(checkpoint: Path, **backend_kwargs) -> Backend | None:
    """The fastest ONNX export next to `checkpoint` made from exactly this file (by SHA-256) that
    computes its decisions: the int8 export, guarded by the fp32 one near the operating point
    (GuardedInt8Backend), when its export measured agreement was accepted and this CPU computes it
    as recorded; else the fp32 export. Stale exports are skipped with a warning."""
    sha = file_sha256(checkpoint) if any(c.is_file() for c in onnx_candidates(checkpoint)) else None
    found: dict[str, OnnxBackend] = {}
    for cand in onnx_candidates(checkpoint):
        if not cand.is_file():
            continue
        int8 = cand.name.endswith(".int8.onnx")
        redo = f"mediflow export --model {checkpoint}" + (" --int8" if int8 else "")
        try:
            backend = OnnxBackend(cand, **backend_kwargs)
        except Exception as exc:  # a truncated or foreign file: onnxruntime's own errors vary by version
            log.warning("ignoring %s: not a complete MediFlow export (%s); to export again, run: %s", cand.name,
                        str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__, redo)
            continue
        if (backend.metadata.get("source_checkpoint") or {}).get("sha256") != sha:
            log.warning("ignoring %s: stale, exported from a different checkpoint than %s (recalibrated or "
                        "retrained since?); to export again, run: %s", cand.name, checkpoint.name, redo)
            continue
        quant = (backend.metadata.get("onnx") or {}).get("quantization")
        if quant is not None and "accepted" not in quant:
            log.warning("ignoring %s: incomplete, its agreement with fp32 was never measured (an interrupted "
                        "export?); to export again, run: %s", cand.name, redo)
            continue
        found["int8" if quant else "fp32"] = backend
    int8, fp32 = found.get("int8"), found.get("fp32")
    if int8 is not None:
        quant = int8.metadata["onnx"]["quantization"]
        if not quant.get("accepted"):
            agreement, change = quant.get("decision_agreement"), quant.get("auc_change")
            measured = ("" if agreement is None or change is None else
                        f": int8 agreed with fp32 on {100 * float(agreement):.2f}% of decisions and changed the AUC "
                        f"by {float(change):+.4f}")
            log.info("not using %s, its export did not accept it%s (the rule: >= %.1f%% and within %.3f)",
                     int8.path.name, measured, 100 * INT8_MIN_AGREEMENT, INT8_MAX_AUC_DROP)
        elif quant.get("fallback_band") is None:
            return int8  # an export from before the guarded rule: accepted on its own agreement
        elif fp32 is None:
            log.info("not using %s: its fp32 original %s is missing", int8.path.name,
                     checkpoint.with_suffix(".onnx").name)
        elif not GuardedInt8Backend.computes_as_recorded(int8, quant.get("probe_logits") or []):
            log.warning("not using %s: this CPU computes the int8 model differently from the CPU that measured it "
                        "(no VNNI?); serving fp32", int8.path.name)
        else:
            return GuardedInt8Backend(int8, fp32, DecisionRule.from_checkpoint(int8.metadata).margin,
                                      quant["fallback_band"])
    return fp32


class Predictor:
    def __init__(self, ckpt: dict[str, Any], *, backend: Backend | None = None, device: str = "cpu",
                 review_below: float = DEFAULT_REVIEW_BELOW, path: Path | None = None, sha256: str | None = None,
                 fast_decode: bool = True, decode_threads: int = 1):
        """`ckpt`: a checkpoint, or an ONNX export's metadata (the checkpoint without its weights).
        `decode_threads`: threads `predict_bytes` may decode one upload on (see decode_image)."""
        self.ckpt = ckpt
        members = checkpoint_members(ckpt)
        self.class_names: list[str] = list(ckpt["class_names"])
        if any(list(m["class_names"]) != self.class_names for m in members):
            raise CheckpointError("ensemble members disagree on class names")
        self.backend: Backend = backend or TorchBackend(ckpt, device=device)
        self.n_members = len(members)
        # Derived at load time from the stored temperature, bias and threshold: every checkpoint,
        # old ones included, answers on the same operating-point-centred scale.
        self.rule = DecisionRule.from_checkpoint(ckpt)
        self.review_below = review_below
        self.prep = PreprocessConfig.from_dict(members[0].get("preprocessing", {}))
        # JPEG draft decoding straight to about the model's input size (see decode_image).
        self.draft_size: int | None = decode_size(self.prep) if fast_decode else None
        self.decode_threads = decode_threads
        sha = sha256 if sha256 is not None else (file_sha256(path) if path else "")
        arch = (ckpt["architecture"] if self.n_members == 1
                else "ensemble(" + ",".join(m["architecture"] for m in members) + ")")
        self.info = ModelInfo(architecture=arch, version=str(ckpt.get("version") or ckpt.get("created", "")),
                              sha256=sha, path=str(path or ""), weights_sha256=weights_sha256(ckpt, sha))
        # Header and pixel checks always; the feature checks when statistics fitted on this model's
        # weights sit beside it (input_check.py).
        self.input_check = InputCheck.for_model(path, sha, image_size=self.prep.image_size,
                                                trims_borders=self.prep.framing == "trim",
                                                weights_sha256=self.info.weights_sha256)

    @classmethod
    def load(cls, path: str | Path | None = None, *, backend: str = "auto", device: str = "cpu",
             threads: int | None = None, serving: bool = False, **kwargs) -> Predictor:
        """`path`: a .pth checkpoint, an .onnx export, or None for the bundled model. `backend`:
        'auto' uses an ONNX export when one made from this checkpoint sits next to it. `threads`,
        `serving`: ONNX Runtime's threads, and their tuning for a server (see OnnxBackend); a
        serving predictor also decodes an upload on that many threads where it can."""
        if backend not in BACKENDS:
            raise MediFlowError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if serving:
            kwargs.setdefault("decode_threads", threads or available_threads())
        p = default_model_path(path)
        if p.suffix.lower() == ".onnx":
            if backend == "torch":
                raise CheckpointError(f"{p}: the torch backend needs the .pth checkpoint, not its ONNX export")
            return cls.from_onnx(OnnxBackend(p, threads=threads, serving=serving), **kwargs)
        if backend in ("auto", "onnx"):
            found = matching_export(p, threads=threads, serving=serving) if p.is_file() else None
            if found is not None:
                return cls.from_onnx(found, **kwargs)
            if backend == "onnx":
                onnx_path = p.with_suffix(".onnx")
                raise CheckpointError(f"no ONNX export of {p} next to it; create one with: "
                                      f"mediflow export --model {p} --onnx {onnx_path}")
        return cls(load_checkpoint(p), device=device, path=p, **kwargs)

    @classmethod
    def from_onnx(cls, backend: OnnxBackend | GuardedInt8Backend, **kwargs) -> Predictor:
        meta = backend.metadata
        # The checkpoint's hash, not the export's: both backends report the same model.
        sha = (meta.get("source_checkpoint") or {}).get("sha256", "")
        predictor = cls(meta, backend=backend, path=backend.path, sha256=sha, **kwargs)
        if isinstance(backend, GuardedInt8Backend):
            predictor.info.architecture += " (int8, fp32 near the operating point)"
        elif (meta.get("onnx") or {}).get("quantization"):
            # Same checkpoint, slightly different answers: say so.
            predictor.info.architecture += " (int8)"
        return predictor

    # The rule is the one source of the calibration and operating point (for an ensemble, the one
    # acting on its members' averaged calibrated probabilities); these read it, never copy it.
    @property
    def pos(self) -> int | None:
        return self.rule.pos

    @property
    def threshold(self) -> float | None:
        return self.rule.threshold

    @property
    def temperature(self) -> float:
        return self.rule.temperature

    @property
    def logit_bias(self) -> list[float] | None:
        return None if self.rule.logit_bias is None else list(self.rule.logit_bias)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # -- arrays ---------------------------------------------------------------------------------
    def preprocess_array(self, img: Image.Image) -> np.ndarray:
        """RGB image -> float32 (3, S, S), the model's input."""
        return eval_array(img, self.prep)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """`preprocess_array` as a tensor, for torch DataLoaders (evaluation scores the serving path)."""
        import torch

        return torch.from_numpy(self.preprocess_array(img))

    def load_image(self, path: str | Path) -> DecodedImage:
        """An image file, decoded the fast way the server decodes uploads."""
        return load_image(path, draft_size=self.draft_size)

    def probabilities_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """(N, K) logits -> (N, K) calibrated probabilities (the scale the threshold is on)."""
        return self.rule.probabilities(logits)

    def probabilities_from_tensors(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 3, S, S) preprocessed batch -> (N, K) calibrated probabilities."""
        return self.probabilities_from_logits(self.backend.run(np.asarray(batch, dtype=np.float32))["logits"])

    def probabilities_from_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.probabilities_from_tensors(np.stack([self.preprocess_array(im) for im in images]))

    def choose_class(self, logits_row: np.ndarray) -> int:
        """The class the decision rule picks from one image's logits (the class a heatmap explains)."""
        return int(self.decide(self.probabilities_from_logits(np.asarray(logits_row)[None, :]))[0])

    def forward(self, batch: np.ndarray, *, heatmap: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(N, 3, S, S) preprocessed batch -> calibrated probabilities (N, K), heatmaps (N, h, w) in
        [0, 1] of each image's predicted class (None unless `heatmap`), and the pooled last feature map
        (N, C) the input check measures: one pass of the graph (two with the torch backend's
        Grad-CAM, which cannot hand back the plain feature map)."""
        x = np.asarray(batch, dtype=np.float32)
        if heatmap and self.backend.name != "onnx":
            logits, maps, _ = self.backend.heatmaps(x, self.choose_class)
            pooled = pooled_features(self.backend.run(x, ("features",))["features"])
            return self.probabilities_from_logits(logits), maps, pooled
        out = self.backend.run(x, ("logits", "features", "cam") if heatmap else ("logits", "features"))
        maps = cam_heatmaps(out, self.choose_class)[1] if heatmap else None
        return self.probabilities_from_logits(out["logits"]), maps, pooled_features(out["features"])

    # -- the input check (input_check.py) --------------------------------------------------------
    def check_before(self, decoded: DecodedImage) -> list[Reason]:
        """Header, pixel and decoder-flag reasons for a decoded image, without the model."""
        return self.input_check.before(decoded.image, decoded.dicom_header, decoded.flags)

    def check_after(self, reasons: list[Reason], pooled_row: np.ndarray,
                    header: dict[str, Any] | None = None) -> dict[str, Any]:
        """`reasons` from check_before plus the feature reasons for one image's pooled features (C,):
        the `input_check` dict (status ok, warning or rejected)."""
        return summarize([*reasons, *self.input_check.after(pooled_row, age_known=header_age_known(header))])

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(N, K) calibrated probabilities -> (N,) called class indices."""
        return self.rule.decide(probs)

    # -- responses -------------------------------------------------------------------------------
    def response(self, probs: np.ndarray, inference_ms: float,
                 input_check: dict[str, Any] | None = None) -> dict[str, Any]:
        """One image's calibrated probabilities (K,) -> `prediction`, `confidence`, `disclaimer` plus MediFlow's extra
        fields. Probabilities are reported centred on the operating point (see decision.py), so the
        called class is the one with the larger reported probability and `confidence` is that value.
        `input_check`: the check's verdict (status ok or warning), added as `input_check`; a warning
        sets `needs_review`. None (evaluation code scoring films it chose itself): no such field."""
        f = self.rule.finding(probs, self.review_below)
        warned = input_check is not None and input_check["status"] != "ok"
        extra = {"input_check": input_check} if input_check is not None else {}
        return {
            "prediction": f["prediction"],
            "confidence": f["confidence"],
            "disclaimer": DISCLAIMER,
            "probabilities": f["probabilities"],
            "needs_review": bool(f["needs_review"] or warned),
            "threshold": f["threshold"],
            "operating_point": f["operating_point"],
            "model": self.info.ref(),
            "inference_ms": round(inference_ms, 2),
            **extra,
        }

    def predict_with_map(self, decoded: DecodedImage, *, heatmap: bool, t0: float | None = None
                         ) -> tuple[dict[str, Any], np.ndarray | None]:
        """The response (with `input_check`), and the raw heatmap ((h, w) in [0, 1]) of the predicted
        class when asked for. `t0`: when the request started, for `inference_ms`. The input check
        reads the decoder's flags and, for DICOM, the header it read (`decoded.dicom_header`).

        Raises InputRejected (carrying the check's verdict and the DICOM header) for an input the
        check refuses: header and pixel reasons before the model runs, feature reasons after; no
        finding either way."""
        answer = self.predict_many([decoded], heatmap=heatmap, t0=t0)[0]
        if isinstance(answer, InputRejected):
            raise answer
        return answer

    def predict_many(self, decoded: list[DecodedImage], *, heatmap: bool, t0: float | None = None
                     ) -> list[tuple[dict[str, Any], np.ndarray | None] | InputRejected]:
        """The API's checks and response for several decoded images, with one pass of the model over
        those the header and pixel checks let through. For each image, in order: (response, heatmap
        or None), or the InputRejected that `predict_with_map` raises for it."""
        t0 = time.perf_counter() if t0 is None else t0
        out: list[tuple[dict[str, Any], np.ndarray | None] | InputRejected | None] = [None] * len(decoded)
        passed: list[tuple[int, list[Reason]]] = []
        for i, d in enumerate(decoded):
            reasons = self.check_before(d)
            if rejected(reasons):
                out[i] = InputRejected(summarize(reasons), dicom_header=d.dicom_header)
            else:
                passed.append((i, reasons))
        if passed:
            batch = np.stack([self.preprocess_array(decoded[i].image) for i, _ in passed])
            probs, maps, pooled = self.forward(batch, heatmap=heatmap)
            elapsed_ms = (time.perf_counter() - t0) * 1000
            for row, (i, reasons) in enumerate(passed):
                header = decoded[i].dicom_header
                check = self.check_after(reasons, pooled[row], header)
                if check["status"] == "rejected":
                    out[i] = InputRejected(check, dicom_header=header)
                else:
                    out[i] = (self.response(probs[row], elapsed_ms, check), None if maps is None else maps[row])
        return out  # type: ignore[return-value]  (every slot is filled above)

    def predict_image(self, decoded: DecodedImage, *, heatmap: bool = False, t0: float | None = None
                      ) -> dict[str, Any]:
        """`heatmap=True` adds `heatmap` (PNG data URL, see heatmap.py) and `heatmap_class`.
        `t0`: when the request started (decoding included), for `inference_ms`. Raises InputRejected
        as predict_with_map does."""
        result, hmap = self.predict_with_map(decoded, heatmap=heatmap, t0=t0)
        return self._with_heatmap(result, hmap)

    def predict_upload(self, data: bytes, *, name: str = "upload", max_pixels: int | None = None,
                       heatmap: bool = False, preview: bool = False) -> tuple[dict[str, Any], DecodedImage]:
        """Decode one upload (checked by content, reduced in the DCT domain for JPEG) and predict it:
        the result and the decoded image (whose `dicom_header` a caller stores with the study, so
        the file is parsed once). The result also carries the decoder's `notes` (e.g. frames of a
        multi-frame DICOM not analysed) and, with `preview`, a PNG of the decoded image the browser
        can show (DICOM, TIFF); the preview is always sent for an image turned by its EXIF
        Orientation. Raises ImageDecodeError for what cannot be decoded, InputRejected for what the
        input check refuses."""
        kwargs = {"max_pixels": max_pixels} if max_pixels else {}
        t0 = time.perf_counter()
        decoded = decode_image(data, name=name, draft_size=self.draft_size, keep_gray=True,
                               threads=self.decode_threads, **kwargs)
        result = self.predict_image(decoded, heatmap=heatmap, t0=t0)
        result["notes"] = list(decoded.notes)
        # A film turned upright by its EXIF Orientation: the heatmap is laid out on the turned image,
        # so the page must draw that image (the preview), not the file as the browser may show it.
        if preview or "exif_orientation" in decoded.flags:
            result["preview"] = preview_data_url(decoded.image)
        return result, decoded

    def predict_bytes(self, data: bytes, *, name: str = "upload", max_pixels: int | None = None,
                      heatmap: bool = False, preview: bool = False) -> dict[str, Any]:
        """`predict_upload`'s result alone."""
        return self.predict_upload(data, name=name, max_pixels=max_pixels, heatmap=heatmap, preview=preview)[0]

    def _with_heatmap(self, result: dict[str, Any], hmap: np.ndarray | None) -> dict[str, Any]:
        if hmap is not None:
            from mediflow.inference.heatmap import overlay_data_url

            result["heatmap"] = overlay_data_url(hmap)
            result["heatmap_class"] = result["prediction"]
        return result

    def model_card(self) -> dict[str, Any]:
        c = self.ckpt
        return {
            **self.info.ref(),
            "classes": self.class_names,
            "positive_class": self.class_names[self.pos] if self.pos is not None else None,
            "threshold": self.threshold,
            "threshold_rule": c.get("threshold_rule"),
            "operating_point": self.rule.operating_point(),
            "temperature": self.temperature,
            "review_below_confidence": self.review_below,
            "preprocessing": self.prep.to_dict(),
            "training_data": c.get("training_data",
                                   "Kermany et al. 2018 pediatric chest X-rays (official train split), "
                                   "patient-grouped validation split"),
            "validation_metrics": {k: v for k, v in (c.get("val_metrics") or {}).items()
                                   if k in ("n", "auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")},
            # Where the operating point was fitted when it was not the training validation split
            # (`mediflow calibrate --data SITE_DIR`): film counts and the metrics on those films.
            "site_calibration": c.get("site_calibration"),
            # Lineage of a recalibrated model: the file it was calibrated from, its version, site, date.
            "calibration": c.get("calibration"),
            "training": {"recipe": c.get("train_config", {}).get("recipe"), "epochs": c.get("epoch"),
                         "seed": c.get("seed"), "seconds": c.get("train_seconds"),
                         "members": self.n_members},
            "backend": self.backend_name,
            "export": c.get("onnx") if self.backend_name == "onnx" else None,
            "input_check": self.input_check.describe(),
            "intended_use": "Screening aid for pediatric (ages 1-5) anterior-posterior chest X-rays like the "
                            "training data; flags likely pneumonia for priority review by a clinician.",
            "limitations": [
                "Not a diagnosis: a clinician must read every image.",
                "Not validated for adults, lateral views, CT or other modalities.",
                "Trained on one hospital's data (Guangzhou); judged on films of other patients acquired apart "
                "from training (test_dev), not yet on other hospitals: calibrate the operating point on 200-300 "
                "of your own labelled films before use (mediflow calibrate --data SITE_DIR).",
                "Does not distinguish bacterial from viral pneumonia or detect other findings.",
            ],
            "disclaimer": DISCLAIMER,
        }
