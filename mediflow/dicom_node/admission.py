"""What the node analyses, decided from the header alone: image instances of a frontal chest film
(Modality CR or DX, BodyPartExamined naming the chest or absent, ViewPosition AP, PA or absent).

Everything else is refused with a reason code and a sentence (recorded in the refused list, no
pixels kept): other modalities and body parts, lateral views, non-image objects (SR, PR, KO, ...),
DICOMDIR, and MediFlow's own results coming back from the PACS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import MediaStorageDirectoryStorage

from mediflow.dicom_node import MANUFACTURER, SERIES_DESCRIPTION_SC, SERIES_DESCRIPTION_SR

ANALYSED_MODALITIES = ("CR", "DX")
FRONTAL_VIEWS = ("AP", "PA")
# BodyPartExamined is free text at many sites: a value is the chest when one of its words is.
CHEST_WORDS = {"CHEST", "THORAX", "LUNG", "LUNGS"}
MEDIA_STORAGE_DIRECTORY = MediaStorageDirectoryStorage
NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "DOC", "REG", "SEG", "RWV", "AU", "ECG", "PLAN", "RTSTRUCT"}


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str

    def input_check(self) -> dict:
        """In the shape the refused list shows for the input check's refusals."""
        return {"status": "rejected", "reasons": [{"code": self.code, "message": self.message, "severity": "rejected"}]}


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def is_own_output(ds: Dataset, own_uids: set[str] | frozenset[str] = frozenset()) -> bool:
    """A result MediFlow wrote (by its UID, or by the manufacturer and series it writes)."""
    if str(ds.get("SOPInstanceUID", "")) in own_uids:
        return True
    return (_text(ds, "Manufacturer") == MANUFACTURER
            and _text(ds, "SeriesDescription") in (SERIES_DESCRIPTION_SR, SERIES_DESCRIPTION_SC))


def admit(ds: Dataset, own_uids: set[str] | frozenset[str] = frozenset()) -> Refusal | None:
    """None when `ds` (a header) is a chest film to analyse, else why not."""
    sop_class = str(ds.get("SOPClassUID", "") or ds.get("MediaStorageSOPClassUID", ""))
    modality = _text(ds, "Modality").upper()
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return Refusal("dicomdir", "a DICOMDIR (media directory), not an image")
    if is_own_output(ds, own_uids):
        return Refusal("mediflow_output", "a result MediFlow wrote itself (its SR or Secondary Capture)")
    if modality in NON_IMAGE_MODALITIES or "PixelData" not in ds and "FloatPixelData" not in ds \
            and "DoubleFloatPixelData" not in ds:
        return Refusal("not_an_image", f"not an image (Modality {modality or 'absent'}): nothing to analyse")
    if not _text(ds, "StudyInstanceUID") or not _text(ds, "SOPInstanceUID"):
        return Refusal("missing_identifiers", "no Study or SOP Instance UID: a result could not be filed with it")
    if modality not in ANALYSED_MODALITIES:
        return Refusal("not_chest_radiograph", f"Modality {modality or 'absent'}: only chest radiographs "
                                               f"({'/'.join(ANALYSED_MODALITIES)}) are analysed")
    part = re.sub(r"[^A-Z ]", " ", _text(ds, "BodyPartExamined").upper()).strip()
    if part and not CHEST_WORDS & set(part.split()):
        return Refusal("not_chest_radiograph", f"BodyPartExamined {part}: only chest films are analysed")
    view = _text(ds, "ViewPosition").upper()
    if view and view not in FRONTAL_VIEWS:
        return Refusal("not_frontal_view", f"ViewPosition {view}: only frontal (AP/PA) chest films are analysed")
    return None
