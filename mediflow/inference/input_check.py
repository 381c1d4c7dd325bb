"""The input check: is an upload a chest radiograph the model was made for? Run on every analysis.

Three sources, cheapest first (docs/input_check.md gives the measured figures and thresholds):

1. The DICOM header, when there is one (`header_reasons`): a Modality, SOP Class or
   BodyPartExamined that names another modality or body part -> `not_chest_radiograph`; a
   PatientAge of 18 years or more -> `likely_adult`.
2. Pixel statistics of the decoded image (`pixel_reasons`, ~0.1 ms on a subsample of <= 128 x 128
   pixels): (nearly) constant or all saturated -> `blank_image`; colour -> `not_chest_radiograph`
   (radiographs are grey); shorter side under the model's input size -> `low_resolution`; uniform
   borders around the film -> `framed`. Decoder flags (`window_fallback`) become warnings.
3. The model's own pass (`InputCheck.after`): the globally pooled last feature map the network
   computes anyway. Its distance from chest films (k-th nearest neighbour cosine distance to a bank of
   pediatric and adult films; Sun et al. 2022) -> `not_chest_radiograph` (rejected) or
   `atypical_image` (warning); the share of the features outside the chest films' principal subspace
   (the residual of Wang et al. 2022, ViM) and a linear chest-film-vs-non-radiograph classifier
   (Outlier Exposure, Hendrycks et al. 2019) -> `not_chest_radiograph` too; a linear (logistic)
   pediatric-vs-adult classifier on the same features -> `likely_adult`.

The fitted statistics live in `<model stem>.input_check.npz` next to the model (refit with
`mediflow fit-input-check`). They belong to the model's weights, not to its file: `mediflow calibrate`
rewrites the checkpoint (new temperature, threshold) but keeps the weights and records their
identity (`weights_sha256`), so the statistics keep working. Without that file, or when it was fitted on
another model's features, only the header and pixel checks run, and the model says so (a warning at
load time and `input_check` in `/api/model`). Steps 1-2 run before the model, so a blank or a CT DICOM costs no
inference; a rejection raises `InputRejected` and no finding is given.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mediflow.errors import MediFlowError
from mediflow.preprocessing import content_box

log = logging.getLogger(__name__)

REJECTED, WARNING, NOTE = "rejected", "warning", "note"
SEVERITY_ORDER = {NOTE: 0, WARNING: 1, REJECTED: 2}
STATS_SUFFIX = ".input_check.npz"
STATS_FORMAT = "mediflow-input-check"
STATS_VERSION = 2
# Version 1 files (no residual or outlier rule) still load; their check has neither rule.
READABLE_VERSIONS = (1, 2)

# -- pixel statistics ------------------------------------------------------------------------------
PROBE = 96  # pixels per side of the nearest-neighbour subsample the pixel checks look at
# Blank: the middle 90% of grey levels spans fewer than this many 8-bit levels, or this share of
# pixels is at (within 4 levels of) black, or at white (a window that saturated everything).
BLANK_SPREAD = 12
BLANK_SATURATED = 0.95
# Colour: a pixel whose channels differ by more than CHROMA levels is coloured; radiographs saved
# as RGB JPEG differ by a few levels (chroma subsampling). More than COLOUR_SHARE coloured pixels:
# a photograph, a document or a screenshot with colour, not a radiograph.
CHROMA = 40
COLOUR_SHARE = 0.05
# Framed: uniform borders (preprocessing.content_box) leave less than this share of the area.
FRAMED_KEEP = 0.85

# -- DICOM header ---------------------------------------------------------------------------------
# DICOM PS3.3 C.7.3.1.1.1 defined terms. Projection radiography (CR, DX, RG, and the non-standard DR)
# and unknown or generic values (OT) pass to the pixel and feature checks; these are other modalities.
OTHER_MODALITIES = {
    "CT": "CT", "MR": "MR", "US": "ultrasound", "MG": "mammography", "NM": "nuclear medicine", "PT": "PET",
    "XA": "X-ray angiography", "RF": "fluoroscopy", "IO": "intra-oral radiography", "PX": "panoramic dental X-ray",
    "OP": "ophthalmic photography", "OPT": "ophthalmic tomography", "OCT": "optical coherence tomography",
    "SM": "slide microscopy", "ES": "endoscopy", "XC": "external-camera photography", "GM": "microscopy",
    "ECG": "ECG", "EPS": "electrophysiology", "IVUS": "intravascular ultrasound", "BDUS": "bone densitometry",
    "BMD": "bone densitometry", "DOC": "document", "SR": "structured report", "RTIMAGE": "radiotherapy image",
    "RTDOSE": "radiotherapy dose", "RTSTRUCT": "radiotherapy structure set", "SEG": "segmentation",
    "PR": "presentation state", "KO": "key object selection", "HD": "haemodynamic waveform",
}
# Roots of Storage SOP Class families (PS3.4 B.5) that no single class's UID equals: every class of
# the family has a longer UID under it (e.g. 1.2.840.10008.5.1.4.1.1.77.1.4, VL Photographic).
ULTRASOUND_RETIRED_ROOT = "1.2.840.10008.5.1.4.1.1.6"
TOMOSYNTHESIS_ROOT = "1.2.840.10008.5.1.4.1.1.13"
VISIBLE_LIGHT_ROOT = "1.2.840.10008.5.1.4.1.1.77"
RADIOTHERAPY_ROOT = "1.2.840.10008.5.1.4.1.1.481"


@functools.cache
def other_sop_classes() -> dict[str, str]:
    """Storage SOP Classes of other modalities, {UID prefix: kind}: a file's SOP Class UID that equals
    a prefix or lies under it (Enhanced CT under CT Image Storage, say) is not a chest radiograph.
    Built on first use: pydicom is imported only when a DICOM header is checked."""
    from pydicom import uid

    return {
        uid.CTImageStorage: "CT", uid.MRImageStorage: "MR", ULTRASOUND_RETIRED_ROOT: "ultrasound",
        uid.UltrasoundMultiFrameImageStorage: "ultrasound",
        uid.DigitalMammographyXRayImageStorageForPresentation: "mammography",
        uid.DigitalIntraOralXRayImageStorageForPresentation: "intra-oral radiography",
        uid.NuclearMedicineImageStorage: "nuclear medicine",
        uid.PositronEmissionTomographyImageStorage: "PET", uid.EnhancedPETImageStorage: "PET",
        uid.XRayAngiographicImageStorage: "X-ray angiography", uid.XRayRadiofluoroscopicImageStorage: "fluoroscopy",
        TOMOSYNTHESIS_ROOT: "breast tomosynthesis", VISIBLE_LIGHT_ROOT: "visible light photography",
        RADIOTHERAPY_ROOT: "radiotherapy",
        # Raw Data Storage; the segmentation and registration classes lie under it (1.2.840.10008.5.1.4.1.1.66.4 ...).
        uid.RawDataStorage: "segmentation",
    }
# BodyPartExamined values (PS3.16 CID 4031 terms and common vendor spellings) that are not the chest.
# Unknown values pass: sites write free text here, and the features still see the pixels.
OTHER_BODY_PARTS = {
    "HEAD", "SKULL", "BRAIN", "FACE", "SINUS", "JAW", "TMJ", "NECK", "CSPINE", "TSPINE", "LSPINE", "SSPINE",
    "SPINE", "PELVIS", "HIP", "ABDOMEN", "KNEE", "LEG", "LOWER LIMB", "LOWERLIMB", "FOOT", "ANKLE", "HEEL",
    "TOE", "FEMUR", "TIBIA", "FIBULA", "ARM", "UPPER LIMB", "UPPERLIMB", "HAND", "FINGER", "THUMB", "WRIST",
    "ELBOW", "FOREARM", "HUMERUS", "SHOULDER", "CLAVICLE", "BREAST", "EXTREMITY", "ORBIT", "EAR", "TEETH",
    "MANDIBLE", "SACRUM", "COCCYX", "KIDNEY", "BLADDER", "PROSTATE", "HEART", "LIVER",
}
ADULT_AGE_YEARS = 18.0
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}

MESSAGES = {
    "blank_image": "The image is blank (constant or nearly constant, or almost every pixel black or white): "
                   "there is no film to analyse.",
    "colour": "The image is in colour: a photograph, document or screenshot, not a radiograph.",
    "features_far": "The image does not look like a chest radiograph (far from every chest film the check "
                    "was fitted on): photographs, documents, other modalities and body parts are not analysed.",
    "atypical_image": "The image is unlike the chest films the model was trained on (other view, body part, "
                      "processing or equipment?): read it without relying on the finding.",
    "likely_adult": "This looks like an adult chest film; the model is made for children aged 1-5 and its "
                    "finding on adults is not validated.",
    "likely_adult_header": "The DICOM header gives an age of 18 years or more; the model is made for children "
                           "aged 1-5 and its finding on adults is not validated.",
    "window_fallback": "The stored DICOM window left almost every pixel black or white, so a window from the "
                       "image's own grey levels was used instead: check the picture before trusting the finding.",
}


@dataclass(frozen=True)
class Reason:
    """One finding of the input check. `severity`: 'rejected' (no finding is given), 'warning'
    (the finding needs review) or 'note' (information only)."""

    code: str
    message: str
    severity: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "severity": self.severity}


def summarize(reasons: Iterable[Reason]) -> dict[str, Any]:
    """Reasons -> the API's `input_check`: {"status": "ok" | "warning" | "rejected", "reasons": [...]}.
    The status is the most severe reason's (a note alone leaves it "ok"); reasons are listed most
    severe first, each code once."""
    seen: dict[str, Reason] = {}
    for r in reasons:
        if r.code not in seen or SEVERITY_ORDER[r.severity] > SEVERITY_ORDER[seen[r.code].severity]:
            seen[r.code] = r
    ordered = sorted(seen.values(), key=lambda r: -SEVERITY_ORDER[r.severity])
    worst = ordered[0].severity if ordered else NOTE
    status = {REJECTED: "rejected", WARNING: "warning", NOTE: "ok"}[worst]
    return {"status": status, "reasons": [r.to_dict() for r in ordered]}


class InputRejected(MediFlowError):
    """An input the check refuses: no finding. `input_check` is summarize()'s dict (status 'rejected');
    the message is one sentence naming the first reason. `dicom_header`: the refused DICOM file's
    header fields (DecodedImage.dicom_header; None for other formats), for the caller that records
    the refusal; never part of the message."""

    def __init__(self, input_check: dict[str, Any], *, dicom_header: dict[str, Any] | None = None):
        self.input_check = input_check
        self.dicom_header = dicom_header
        first = next(r for r in input_check["reasons"] if r["severity"] == REJECTED)
        super().__init__(f"Not analysed: {first['message'][0].lower()}{first['message'][1:]}")


def rejected(reasons: list[Reason]) -> bool:
    return any(r.severity == REJECTED for r in reasons)


# -- header ---------------------------------------------------------------------------------------
def age_years(value: str | None) -> float | None:
    """A DICOM Age String (PS3.5 6.2, 'nnnD|W|M|Y', e.g. '004Y') in years; None when absent or malformed."""
    m = _AGE.match(value or "")
    return None if m is None else int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]


def header_reasons(meta: dict[str, Any] | None) -> list[Reason]:
    """Reasons from DICOM header fields (dicom_metadata's dict; None or {} for non-DICOM input)."""
    if not meta:
        return []
    out: list[Reason] = []
    modality = str(meta.get("Modality") or "").strip().upper()
    if modality in OTHER_MODALITIES:
        out.append(Reason("not_chest_radiograph", f"The DICOM header says Modality {modality} "
                          f"({OTHER_MODALITIES[modality]}): the model reads chest radiographs only.", REJECTED))
    sop = str(meta.get("SOPClassUID") or "").strip()
    for prefix, kind in other_sop_classes().items():
        if sop == prefix or sop.startswith(prefix + "."):
            out.append(Reason("not_chest_radiograph", f"The DICOM SOP Class ({sop}) is a {kind} image: the model "
                              "reads chest radiographs only.", REJECTED))
            break
    part = re.sub(r"[^A-Z ]", "", str(meta.get("BodyPartExamined") or "").upper()).strip()
    if part in OTHER_BODY_PARTS or part.replace(" ", "") in OTHER_BODY_PARTS:
        out.append(Reason("not_chest_radiograph", f"The DICOM header says BodyPartExamined {part}: the model "
                          "reads chest films only.", REJECTED))
    age = age_years(meta.get("PatientAge"))
    if age is not None and age >= ADULT_AGE_YEARS:
        out.append(Reason("likely_adult", MESSAGES["likely_adult_header"], WARNING))
    return out


def header_age_known(meta: dict[str, Any] | None) -> bool:
    return bool(meta) and age_years(meta.get("PatientAge")) is not None


# -- pixels ---------------------------------------------------------------------------------------
def probe(img: Image.Image) -> np.ndarray:
    """A nearest-neighbour subsample of PROBE x PROBE pixels (or the image, when smaller): (h, w) or
    (h, w, 3) uint8. Nearest-neighbour resizing reads only the sampled pixels: microseconds whatever
    the upload's size."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    if img.width > PROBE or img.height > PROBE:
        img = img.resize((min(PROBE, img.width), min(PROBE, img.height)), Image.Resampling.NEAREST)
    return np.asarray(img)


def pixel_reasons(img: Image.Image, *, image_size: int, trims_borders: bool, flags: Iterable[str] = ()) -> list[Reason]:
    """Reasons from the decoded image's pixels and the decoder's flags.

    `image_size`: the model's input side (pixels); a shorter side is upsampled -> `low_resolution`.
    `trims_borders`: the model's preprocessing cuts uniform borders (framing 'trim'), which the
    `framed` note then says; otherwise it advises cropping. `framed` is a note either way: on a
    JPEG decoded at reduced scale the air beside a film's body is as flat as a border, so as a
    warning it would flag ordinary films."""
    out: list[Reason] = []
    a = probe(img)
    if a.ndim == 3:
        chroma = a.max(axis=2).astype(np.int16) - a.min(axis=2)
        colour_share = float(np.count_nonzero(chroma > CHROMA)) / chroma.size
        grey = (a.sum(axis=2, dtype=np.uint16) // 3).astype(np.uint8)
    else:
        colour_share, grey = 0.0, a
    # Percentiles from the 256-bin histogram: a sort would cost more than the rest of the check.
    cdf = np.cumsum(np.bincount(grey.ravel(), minlength=256)) / grey.size
    p5, p95 = int(np.searchsorted(cdf, 0.05)), int(np.searchsorted(cdf, 0.95))
    saturated = float(max(cdf[4], 1.0 - cdf[250]))  # all black or all white, not a mix of both
    if p95 - p5 < BLANK_SPREAD or saturated >= BLANK_SATURATED:
        return [Reason("blank_image", MESSAGES["blank_image"], REJECTED)]
    if colour_share > COLOUR_SHARE:
        out.append(Reason("not_chest_radiograph", MESSAGES["colour"], REJECTED))
    w, h = img.size
    if min(w, h) < image_size:
        out.append(Reason("low_resolution", f"The image is {w} x {h} pixels, smaller than the model's "
                          f"{image_size} x {image_size} input: fine detail is missing and the finding is less "
                          "reliable.", WARNING))
    box = content_box(Image.fromarray(grey))
    keep = (box[2] - box[0]) * (box[3] - box[1]) / grey.size
    if keep < FRAMED_KEEP:
        if trims_borders:
            out.append(Reason("framed", f"The film sits inside a uniform border ({1 - keep:.0%} of the image, e.g. "
                              "a screenshot or a scan); the model analysed the film inside it (preprocessing "
                              "cuts uniform borders).", NOTE))
        else:
            out.append(Reason("framed", f"The film sits inside a uniform border ({1 - keep:.0%} of the image, e.g. "
                              "a screenshot); this model analyses the border with the film: cropping to the film "
                              "may give a better reading.", NOTE))
    if "window_fallback" in set(flags):
        out.append(Reason("window_fallback", MESSAGES["window_fallback"], WARNING))
    return out


# -- features -------------------------------------------------------------------------------------
# The distance and the residual, one implementation for the check and for its fit (input_check_fit):
# computed in the dtype of `features` (the check float32, the fit float64).

def projected_unit_rows(features: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(N, C) pooled features -> (N, d): projected onto the (C, d) principal axes, scaled to unit length."""
    z = features @ projection
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    return z


def knn_distance(features: np.ndarray, projection: np.ndarray, bank_rows: np.ndarray, k: int) -> np.ndarray:
    """(N, C) pooled features -> (N,) cosine distance, in the projection, to the k-th nearest of
    `bank_rows` (projected_unit_rows of the bank's films)."""
    sims = projected_unit_rows(features, projection) @ bank_rows.T
    return 1.0 - np.partition(sims, -k, axis=1)[:, -k]


def subspace_residual(features: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(N, C) pooled features -> (N,) share of each row's norm outside the principal subspace,
    ||x - P P^T x|| / ||x|| in [0, 1] (P's columns are orthonormal); 0 for a row the subspace holds
    entirely."""
    inside = np.square(features @ projection).sum(axis=1)
    total = np.square(features).sum(axis=1) + 1e-12
    return np.sqrt(np.clip(1.0 - inside / total, 0.0, 1.0))


@dataclass
class InputCheckStats:
    """What `mediflow fit-input-check` fits, for one model (by its checkpoint's SHA-256).

    Distance from chest films: the k-th nearest-neighbour cosine distance (Sun et al., "Out-of-
    Distribution Detection with Deep Nearest Neighbors", ICML 2022) from a bank of pediatric and adult
    chest films' pooled features, in a `projection` onto their top principal axes (which keeps the
    shipped file small); 0 for a film identical in direction to one in the bank, up to 2.

    The projection drops what lies off those axes, and an input unlike any chest film can be near one
    inside them (a grey portrait, say): the residual, the share of the features' norm outside the
    principal subspace (Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR
    2022), measures what the projection drops.

    Both measure distance from chest films only. The outlier score is a linear classifier of chest
    films against auxiliary non-radiographs (Outlier Exposure: Hendrycks, Mazeika and Dietterich,
    "Deep Anomaly Detection with Outlier Exposure", ICLR 2019): it learns which directions separate
    pictures of other things from films, which distance alone does not know."""

    projection: np.ndarray  # (C, d) float32
    bank: np.ndarray  # (N, d) unit rows, stored as float16
    k: int
    adult_weights: np.ndarray  # (C,) on raw pooled features (the fit's standardisation folded in)
    adult_bias: float
    adult_threshold: float  # P(adult) at or above which `likely_adult` is raised
    warn_distance: float  # distance above which `atypical_image` is raised
    reject_distance: float  # ... above which `not_chest_radiograph` rejects
    meta: dict[str, Any]
    # Residual (0-1) at or above which `not_chest_radiograph` rejects; inf: no residual rule (version 1).
    reject_residual: float = float("inf")
    # Outlier score: weights (C,) on L2-normalised pooled features (standardisation folded in), bias,
    # and the score at or above which `not_chest_radiograph` rejects; None / inf: no such rule (version 1).
    outlier_weights: np.ndarray | None = None
    outlier_bias: float = 0.0
    reject_outlier: float = float("inf")

    @property
    def model_sha256(self) -> str:
        return str(self.meta.get("model_sha256", ""))

    @property
    def weights_sha256(self) -> str:
        """The identity of the weights the statistics were fitted on (checkpoint.weights_sha256);
        files fitted before it was recorded name the checkpoint file, which is the same thing for a
        model that was never recalibrated."""
        return str(self.meta.get("weights_sha256") or self.model_sha256)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N, C) pooled features -> (N,) cosine distance to the k-th nearest chest film of the bank."""
        return knn_distance(np.asarray(features, dtype=np.float32), self.projection, self._bank32, self.k)

    def residual(self, features: np.ndarray) -> np.ndarray:
        """(N, C) pooled features -> (N,) share of each row's norm outside the principal subspace,
        ||x - P P^T x|| / ||x|| in [0, 1] (the projection's columns are orthonormal); 0 for a row the
        subspace holds entirely."""
        return subspace_residual(np.asarray(features, dtype=np.float32), self.projection)

    def outlier_score(self, features: np.ndarray) -> np.ndarray:
        """(N, C) pooled features -> (N,) the outlier classifier's logit (higher: less like a chest
        film); -inf for every row when the file has no outlier classifier (version 1)."""
        x = np.asarray(features, dtype=np.float64)
        if self.outlier_weights is None:
            return np.full(len(x), -np.inf)
        unit = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
        return unit @ self.outlier_weights + self.outlier_bias

    def refuses(self, features: np.ndarray, distance: np.ndarray | None = None) -> np.ndarray:
        """(N, C) pooled features -> (N,) bool: not a chest film by any of the three rules.
        `distance`: `self.distance(features)` when the caller has it already."""
        distance = self.distance(features) if distance is None else distance
        return ((distance >= self.reject_distance) | (self.residual(features) >= self.reject_residual)
                | (self.outlier_score(features) >= self.reject_outlier))

    @property
    def _bank32(self) -> np.ndarray:
        if getattr(self, "_b32", None) is None:
            self._b32 = np.asarray(self.bank, dtype=np.float32)
        return self._b32

    def p_adult(self, features: np.ndarray) -> np.ndarray:
        """(N, C) pooled features -> (N,) P(adult film) from the linear classifier."""
        z = np.asarray(features, dtype=np.float64) @ self.adult_weights + self.adult_bias
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {
            "projection": self.projection.astype(np.float32), "bank": self.bank.astype(np.float16),
            "adult_weights": self.adult_weights.astype(np.float32),
            "scalars": np.array([self.adult_bias, self.adult_threshold, self.warn_distance, self.reject_distance,
                                 self.k, self.reject_residual, self.outlier_bias, self.reject_outlier]),
            **({"outlier_weights": self.outlier_weights.astype(np.float32)}
               if self.outlier_weights is not None else {}),
            "meta": np.array(json.dumps({**self.meta, "format": STATS_FORMAT, "format_version": STATS_VERSION})),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> InputCheckStats:
        """Raises MediFlowError for a file that is not a readable input-check file."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != STATS_FORMAT or meta.get("format_version") not in READABLE_VERSIONS:
                    raise ValueError("not an input-check file of this MediFlow version")
                scalars = [float(v) for v in z["scalars"]]
                bias, thr, warn, reject, k = scalars[:5]
                # Format 2 holds the residual and outlier rules; a rule a file lacks does not run.
                later: dict[str, Any] = dict(zip(("reject_residual", "outlier_bias", "reject_outlier"), scalars[5:8]))
                if "outlier_weights" in z.files and len(scalars) >= 8:
                    later["outlier_weights"] = z["outlier_weights"].astype(np.float64)
                else:
                    later["reject_outlier"] = float("inf")
                return cls(z["projection"].astype(np.float32), z["bank"], int(k),
                           z["adult_weights"].astype(np.float64), bias, thr, warn, reject, meta, **later)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise MediFlowError(f"{path}: not a readable input-check file ({exc})") from None


def carry_statistics(model_path: str | Path, out_path: str | Path) -> Path | None:
    """Copy the statistics beside `model_path` to beside `out_path` (a recalibrated copy of the same
    weights written elsewhere): the path written, or None when there was nothing to carry or they are
    the same file."""
    src, dst = stats_path(model_path), stats_path(out_path)
    if not src.is_file() or src.resolve() == dst.resolve():
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return dst


def stats_path(model_path: str | Path) -> Path:
    """Where the input-check statistics of a model file live: `<stem>.input_check.npz` beside it
    (an export `x.onnx` / `x.int8.onnx` shares `x.pth`'s)."""
    p = Path(model_path)
    stem = p.name.split(".")[0]
    return p.with_name(stem + STATS_SUFFIX)


class InputCheck:
    """The check as the predictor runs it: `before(img, header)` without the model, then
    `after(pooled)` on the model's pooled features."""

    def __init__(self, *, image_size: int, trims_borders: bool, stats: InputCheckStats | None = None,
                 missing: str | None = None):
        self.image_size = image_size
        self.trims_borders = trims_borders
        self.stats = stats
        # Why the feature checks do not run (None when they do, or when nobody asked for them).
        self.missing = missing

    @classmethod
    def for_model(cls, model_path: str | Path | None, model_sha256: str, *, image_size: int,
                  trims_borders: bool, weights_sha256: str | None = None) -> InputCheck:
        """Loads the statistics beside `model_path` when they were fitted on this model's weights
        (`weights_sha256`, else the file's `model_sha256`); otherwise only header and pixel checks run
        and a warning says so, with the command that fits them."""
        stats, missing = None, None
        if model_path:
            path = stats_path(model_path)
            known = {model_sha256, weights_sha256 or model_sha256} - {""}
            if not path.is_file():
                missing = f"no input-check statistics ({path.name}) beside the model"
            else:
                try:
                    stats = InputCheckStats.load(path)
                except MediFlowError as exc:
                    missing = str(exc)
                if stats is not None and stats.weights_sha256 not in known and stats.model_sha256 not in known:
                    missing = f"{path.name} was fitted on another model's weights"
                    stats = None
            if missing:
                fix = (f"mediflow fit-input-check --model {model_path} --adult ADULT_FILMS_DIR "
                       "(docs/input_check.md)")
                missing = (f"{missing}: adult films and non-radiographs are NOT flagged by their features, only by "
                           f"DICOM header and pixel checks. Fit them with: {fix}")
                log.warning("INPUT CHECK INCOMPLETE for %s: %s", Path(model_path).name, missing)
        return cls(image_size=image_size, trims_borders=trims_borders, stats=stats, missing=missing)

    def describe(self) -> dict[str, Any]:
        """What `/api/model` says of the check: whether the feature checks run, and why not."""
        return {"feature_checks": self.stats is not None,
                "statistics_fitted_on": self.stats.weights_sha256 if self.stats is not None else None,
                "problem": self.missing}

    @property
    def uses_features(self) -> bool:
        return self.stats is not None

    def before(self, img: Image.Image, header: dict[str, Any] | None = None, flags: Iterable[str] = ()) -> list[Reason]:
        """Header and pixel reasons (no model needed)."""
        reasons = header_reasons(header)
        return reasons + pixel_reasons(img, image_size=self.image_size, trims_borders=self.trims_borders,
                                       flags=flags)

    def after(self, pooled: np.ndarray, *, age_known: bool = False) -> list[Reason]:
        """Feature reasons for one image's pooled features (C,). `age_known`: the header gave an age,
        which outranks the classifier's guess."""
        if self.stats is None:
            return []
        x = np.asarray(pooled, dtype=np.float64)[None]
        distance = self.stats.distance(x)
        dist = float(distance[0])
        if bool(self.stats.refuses(x, distance)[0]):
            return [Reason("not_chest_radiograph", MESSAGES["features_far"], REJECTED)]
        out = []
        if dist >= self.stats.warn_distance:
            out.append(Reason("atypical_image", MESSAGES["atypical_image"], WARNING))
        if not age_known and float(self.stats.p_adult(x)[0]) >= self.stats.adult_threshold:
            out.append(Reason("likely_adult", MESSAGES["likely_adult"], WARNING))
        return out
