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
    heatmap: str | None = Field(default=None, description="with ?heatmap=true: PNG data URL, a square colour map "
                                "of where the model looked, to be stretched over the uploaded image")
    heatmap_class: str | None = Field(default=None, description="the class the heatmap explains (the prediction)")


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool
    version: str
