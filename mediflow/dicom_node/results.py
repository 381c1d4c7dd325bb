"""The result objects written back into the source study: a TID 1500 Comprehensive 3D SR, and a
Secondary Capture of the film with the heatmap and the finding burned in.

Every UID is derived from the source SOP Instance UID, the model's SHA-256 and the kind of object,
so a retry or a re-sent film yields byte-for-byte the same identifiers: the PACS stores one SR,
not a second one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from mediflow import DISCLAIMER, __version__
from mediflow.decision import REPORTED_SCALE
from mediflow.dicom_node import MANUFACTURER, SERIES_DESCRIPTION_SC, SERIES_DESCRIPTION_SR

PNEUMONIA = ("233604007", "SCT", "Pneumonia")
# Series numbers far from a modality's own, so the results sort after the films in a viewer.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
_PRIVATE_SCHEME = "99MEDIFLOW"


def result_uid(source_sop_instance_uid: str, model_sha256: str, kind: str) -> str:
    """The deterministic UID of one result object (`kind`: 'sr', 'sc', 'sr-series', 'sc-series')."""
    return generate_uid(entropy_srcs=[source_sop_instance_uid, model_sha256, kind])


@dataclass
class Built:
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    data: bytes


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value, _PRIVATE_SCHEME, meaning)


def _positive(result: dict[str, Any]) -> tuple[str, float]:
    """(positive class, its reported probability)."""
    op = result.get("operating_point") or {}
    probs = result["probabilities"]
    positive = op.get("positive_class") or ("PNEUMONIA" if "PNEUMONIA" in probs else max(probs, key=probs.get))
    return positive, float(probs[positive])


def finding_text(result: dict[str, Any]) -> str:
    """One line: the call and the probability, as the SR codes them."""
    positive, p = _positive(result)
    call = "Present" if result["prediction"] == positive else "Absent"
    review = "; NEEDS REVIEW" if result["needs_review"] else ""
    return f"Pneumonia: {call} (P={p:.3f}{review})"


def warnings_of(result: dict[str, Any]) -> list[str]:
    check = result.get("input_check") or {}
    return [r["message"] for r in check.get("reasons", []) if r.get("severity") == "warning"]


# Patient and study attributes the SR copies from its evidence; a film may lack the type 2 ones.
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _evidence(source: Dataset) -> Dataset:
    ds = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:
            ds.add(elem)
    for keyword in _COPIED:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


class _ReportParts:
    """The parts of the TID 1500 content that are the same for every film one model reads: built once
    per model (highdicom validates each part as it is built) and reused, never changed."""

    def __init__(self, model: dict[str, Any]):
        from highdicom.sr import (
            AlgorithmIdentification,
            CodedConcept,
            DeviceObserverIdentifyingAttributes,
            ObservationContext,
            ObserverContext,
        )

        self.algorithm = AlgorithmIdentification(
            name=f"MediFlow {model['architecture']}", version=f"{__version__} model {model['version']}",
            parameters=[f"sha256={model['sha256']}"], manufacturer=MANUFACTURER)
        device = ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=result_uid(model["sha256"], "device", "observer"), name="MediFlow dicom-node",
                manufacturer_name=MANUFACTURER, model_name=model["architecture"][:64]))
        self.observation_context = ObservationContext(observer_device_context=device)
        self.pneumonia = CodedConcept(*PNEUMONIA)
        self.needs_review = _code("MF002", "Needs review by a clinician")
        self.probability = _code("MF001", f"Probability of pneumonia ({REPORTED_SCALE} scale)")
        self.no_units = CodedConcept("1", "UCUM", "no units")
        self.procedure = CodedConcept("399208008", "SCT", "Plain chest X-ray")


@lru_cache(maxsize=8)
def _report_parts(architecture: str, version: str, sha256: str) -> _ReportParts:
    return _ReportParts({"architecture": architecture, "version": version, "sha256": sha256})


def build_sr(source: Dataset, result: dict[str, Any]) -> Built:
    """The TID 1500 Measurement Report for one analysed film. `source`: its header (no pixels needed);
    `result`: the Predictor's response for it."""
    from highdicom.sr import (
        Comprehensive3DSR,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )

    model = result["model"]
    parts = _report_parts(model["architecture"], model["version"], model["sha256"])
    source = _evidence(source)
    sop_uid = str(source.SOPInstanceUID)
    positive, p = _positive(result)
    present = result["prediction"] == positive
    evaluations = [
        QualitativeEvaluation(parts.pneumonia, codes.SCT.Present if present else codes.SCT.Absent),
        QualitativeEvaluation(parts.needs_review, codes.SCT.Yes if result["needs_review"] else codes.SCT.No),
    ]
    scale = (f"{REPORTED_SCALE} probability of {positive}: 0.5 is the operating point; "
             f"values >= 0.5 are called Present")
    probability = Measurement(name=parts.probability, value=round(p, 4), unit=parts.no_units)
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=result_uid(sop_uid, model["sha256"], "tracking"),
                                               identifier="MediFlow pneumonia screening"),
        finding_type=parts.pneumonia, algorithm_id=parts.algorithm, measurements=[probability],
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)])
    # Free text the template has no row for: the scale, the input check's warnings, the disclaimer.
    comment = codes.DCM.Comment
    notes = [scale, *(f"Input check warning: {w}" for w in warnings_of(result)), f"PRELIMINARY. {DISCLAIMER}"]
    for text in notes:
        group.append(TextContentItem(comment, text[:1024], relationship_type="CONTAINS"))
    report = MeasurementReport(observation_context=parts.observation_context,
                               procedure_reported=parts.procedure, imaging_measurements=[group])
    sr = Comprehensive3DSR(
        evidence=[source], content=report[0],
        series_instance_uid=result_uid(sop_uid, model["sha256"], "sr-series"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(sop_uid, model["sha256"], "sr"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=SERIES_DESCRIPTION_SR)
    sr.PreliminaryFlag = "PRELIMINARY"
    sr.SoftwareVersions = __version__
    return Built("sr", str(sr.SOPClassUID), str(sr.SOPInstanceUID), _encode(sr))


def _font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _wrap(lines: list[str], font, width: int) -> list[str]:
    """Each line broken at spaces so that it fits `width` pixels (a long word stays whole)."""
    out: list[str] = []
    for line in lines:
        current = ""
        for word in line.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and font.getlength(candidate) > width:
                out.append(current)
                current = word
            else:
                current = candidate
        out.append(current)
    return out


def burn_in(film: Image.Image, heatmap: np.ndarray | None, lines: list[str]) -> np.ndarray:
    """The film (as analysed) with the heatmap blended over it and `lines` written in a band above
    it: an (H, W, 3) uint8 RGB array, at most 2048 px wide."""
    from mediflow.inference.heatmap import blend

    img = film.convert("RGB")
    if img.width > 2048:
        img = img.resize((2048, round(img.height * 2048 / img.width)), Image.Resampling.BILINEAR)
    if heatmap is not None:
        img = blend(img, heatmap)
    size = max(14, img.width // 45)
    font = _font(size)
    lines = _wrap(lines, font, img.width - 16)
    band = (size + 8) * len(lines) + 8
    canvas = Image.new("RGB", (img.width, img.height + band), (0, 0, 0))
    canvas.paste(img, (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((8, 6 + i * (size + 8)), line, fill=(255, 255, 0), font=font)
    return np.asarray(canvas)


def build_sc(source: Dataset, result: dict[str, Any], film: Image.Image, heatmap: np.ndarray | None) -> Built:
    """A Secondary Capture of the film with the heatmap and the finding written on it."""
    import highdicom as hd

    model = result["model"]
    sop_uid = str(source.SOPInstanceUID)
    lines = [f"PRELIMINARY - {finding_text(result)}",
             f"MediFlow {__version__}, {model['architecture']} (sha256 {model['sha256'][:12]})",
             *(f"Input check: {w}" for w in warnings_of(result)), DISCLAIMER]
    pixels = burn_in(film, heatmap, lines)

    def tag(keyword: str):
        return source.get(keyword) or None

    # The film's own orientation when it has one; else the usual display of a frontal chest film
    # (rows towards the patient's left, columns towards the feet).
    given = source.get("PatientOrientation") or []
    orientation = tuple(given) if len(given) == 2 else ("L", "F")

    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=result_uid(sop_uid, model["sha256"], "sc-series"), series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result_uid(sop_uid, model["sha256"], "sc"), instance_number=1,
        manufacturer=MANUFACTURER, patient_id=tag("PatientID"), patient_name=tag("PatientName"),
        patient_birth_date=tag("PatientBirthDate"), patient_sex=tag("PatientSex"),
        accession_number=tag("AccessionNumber"), study_id=tag("StudyID"), study_date=tag("StudyDate"),
        study_time=tag("StudyTime"), referring_physician_name=tag("ReferringPhysicianName"),
        patient_orientation=orientation,
        series_description=SERIES_DESCRIPTION_SC)
    sc.PreliminaryFlag = "PRELIMINARY"  # not in the SC IOD's modules, but what a reader's viewer shows
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = None  # type 2C: a chest film is not of one side
    sc.ImageComments = f"PRELIMINARY. {finding_text(result)}. {DISCLAIMER}"[:10240]
    sc.SoftwareVersions = __version__
    return Built("sc", str(sc.SOPClassUID), str(sc.SOPInstanceUID), _encode(sc))
