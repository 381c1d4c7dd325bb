"""Request/response models of the study (worklist and review) API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from mediflow.serving.schemas import InputCheckResult, ModelRef, OperatingPoint

ReviewState = Literal["unreviewed", "confirmed", "corrected"]
PacsDelivery = Literal["sent", "waiting", "failed"]


def storable_text(value: str) -> str:
    """`value` unchanged when every database can store it; ValueError naming the problem otherwise.

    JSON can carry a lone UTF-16 surrogate (\\ud800), which no UTF-8 encoder accepts, and a NUL
    (\\u0000), which PostgreSQL text columns refuse.
    """
    if "\x00" in value:
        raise ValueError("contains a NUL character (U+0000), which the study store cannot keep")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a lone surrogate (U+{ord(value[exc.start]):04X}): not valid Unicode text") from None
    return value


class ReviewRequest(BaseModel):
    label: str = Field(description="the radiologist's read: one of the model's class names, e.g. NORMAL")
    note: str | None = Field(default=None, max_length=2000)

    # Before pydantic's own str check, which refuses a surrogate without saying what it is.
    @field_validator("label", "note", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        return storable_text(value) if isinstance(value, str) else value


class ReviewOut(BaseModel):
    id: int
    label: str
    state: Literal["confirmed", "corrected"] = Field(description="confirmed (agrees with the model) or corrected")
    note: str | None
    reviewer: str
    reviewed_at: datetime
    model_prediction: str


class StudySummary(BaseModel):
    id: uuid.UUID
    received_at: datetime
    source_format: str
    prediction: str
    confidence: float
    probability: float = Field(description="worklist priority: reported (operating-point-centred) probability of "
                               "the positive class (PNEUMONIA)")
    uncertain: bool = Field(description="the model's confidence was below the review cut-off, or the input check "
                                        "warned (needs_review of the analysis)")
    review_state: ReviewState = Field(description="unreviewed, confirmed or corrected")
    review_label: str | None
    reviewer: str | None
    reviewed_at: datetime | None
    has_image: bool
    input_check: InputCheckResult | None = Field(default=None, description="the input check's verdict (ok or "
                                                 "warning); null for studies saved before the check existed")
    accession_number: str | None = Field(default=None, description="DICOM studies: to find the study in the PACS")
    study_date: str | None = Field(default=None, description="DICOM StudyDate (YYYYMMDD)")
    modality: str | None = Field(default=None, description="DICOM Modality (CR, DX)")
    pacs_delivery: PacsDelivery | None = Field(default=None, description="studies from the DICOM node: sent (the SR "
                                               "is in the PACS), waiting (queued while the PACS is unreachable) "
                                               "or failed")
    duplicate_of: uuid.UUID | None = Field(default=None, description="the first study of the same image (identical "
                                           "bytes, by SHA-256) when this upload repeats it; null for a first upload")
    same_image_uploads: int = Field(default=1, description="studies of this same image, this one included")


class StudyList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[StudySummary]


class RefusedInput(BaseModel):
    id: uuid.UUID
    received_at: datetime
    source_format: str
    image_sha256: str
    detail: str = Field(description="why no finding was given, as the analysis response said")
    input_check: InputCheckResult


class RefusalList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[RefusedInput]


class StudyDetail(StudySummary):
    image_sha256: str
    probabilities: dict[str, float]
    threshold: float | None = Field(description="reported positive-class probability at or above which the "
                                    "positive class is called: 0.5 on the centred scale; null for argmax")
    operating_point: OperatingPoint | None = Field(default=None, description="the calibrated operating point "
                                                   "behind the centred scale (as in the analysis response)")
    margin: float = Field(description="distance of the reported positive-class probability from the threshold")
    model: ModelRef
    study_instance_uid: str | None
    sop_instance_uid: str | None
    patient_age: str | None
    patient_sex: str | None
    review_note: str | None
    reviews: list[ReviewOut] = Field(description="every review of this study, oldest first")
    disclaimer: str


class StudyHeatmap(BaseModel):
    heatmap: str = Field(description="PNG data URL: a square colour map of where the model looked, to be "
                                     "stretched over the stored image (as from POST /api/vision/analyze?heatmap=true)")
    heatmap_class: str = Field(description="the class the map explains: the serving model's prediction")
    model: ModelRef = Field(description="the model that computed the map: the one serving now")
    note: str | None = Field(default=None, description="set when the study's finding came from another model "
                                                       "than the one that computed this map")
