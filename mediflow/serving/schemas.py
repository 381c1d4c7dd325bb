"""Typed request/response models of the API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    architecture: str
    version: str
    sha256: str


class AnalysisResponse(BaseModel):
    prediction: str = Field(description="class name, e.g. PNEUMONIA")
    confidence: float = Field(description="probability of the predicted class, 4 decimals")
    disclaimer: str
    probabilities: dict[str, float]
    needs_review: bool = Field(description="confidence below the review cut-off: manual review suggested")
    threshold: float | None = Field(description="PNEUMONIA probability at or above which PNEUMONIA is predicted")
    model: ModelRef
    inference_ms: float
    notes: list[str] = Field(default_factory=list, description="about the input, e.g. 'multi-frame DICOM: first "
                                                                "frame of 3 analysed'")
    preview: str | None = Field(default=None, description="with ?preview=true: the decoded image as a PNG data URL")
    study_id: str | None = Field(default=None, description="the saved study, when the server keeps a study store")


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool
    version: str
