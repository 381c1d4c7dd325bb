"""Typed response models of the API (they also document it at /docs and /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelRef(BaseModel):
    """Which model made a finding: everywhere the API names a model (an analysis, a study, a heatmap,
    the model card)."""

    architecture: str
    version: str
    sha256: str = Field(description="SHA-256 of the checkpoint (with its calibration)")

    @classmethod
    def of_study(cls, study: Any) -> ModelRef:
        """The model recorded with a stored study (store.models.Study)."""
        return cls(architecture=study.model_architecture, version=study.model_version, sha256=study.model_sha256)


CheckStatus = Literal["ok", "warning", "rejected"]
Severity = Literal["rejected", "warning", "note"]
Scale = Literal["operating-point-centred"]
StoreStatus = Literal["ok", "failing", "none"]
StoreProblem = Literal["unavailable", "timeout", "disk full"]


class OperatingPoint(BaseModel):
    positive_class: str = Field(description="the class the operating point is on, e.g. PNEUMONIA")
    calibrated_threshold: float = Field(description="the operating point on the calibrated probability scale: "
                                        "calibrated P(positive) at or above which the positive class is called")
    scale: Scale = Field(description="'operating-point-centred': reported probabilities are "
                       "p' = sigmoid(logit(p) - logit(calibrated_threshold)) for calibrated p, so the operating "
                       "point is 0.5; p = sigmoid(logit(p') + logit(calibrated_threshold))")


class CheckReason(BaseModel):
    code: str = Field(description="not_chest_radiograph, blank_image (rejected); likely_adult, atypical_image, "
                                  "low_resolution, window_fallback (warnings); framed (a note: borders around "
                                  "the film)")
    message: str = Field(description="one sentence for the reader")
    severity: Severity = Field(description="rejected, warning or note")


class InputCheckResult(BaseModel):
    status: CheckStatus = Field(description="ok, warning (the finding needs review; needs_review is true) or rejected "
                                    "(no finding: HTTP 422)")
    reasons: list[CheckReason] = Field(default_factory=list, description="most severe first")


class RejectedResponse(BaseModel):
    detail: str = Field(description="one sentence: why no finding was given")
    input_check: InputCheckResult
    refusal_id: str | None = Field(default=None,
                                   description="the worklist's record of the refusal (GET "
                                               "/api/studies/refused), when the server keeps a study store")


class AnalysisResponse(BaseModel):
    prediction: str = Field(description="class name, e.g. PNEUMONIA: the class with the larger reported probability")
    confidence: float = Field(description="reported probability of the predicted class, 4 decimals (>= 0.5 for a "
                              "two-class model)")
    disclaimer: str
    probabilities: dict[str, float] = Field(description="per class, 4 decimals; for a two-class model centred on "
                                            "the operating point (see operating_point)")
    needs_review: bool = Field(description="confidence below the review cut-off, or an input-check warning: manual "
                                           "review suggested")
    input_check: InputCheckResult = Field(description="is this a pediatric chest radiograph the model was made for? "
                                                      "(status ok or warning here; rejected inputs get HTTP 422)")
    threshold: float | None = Field(description="reported PNEUMONIA probability at or above which PNEUMONIA is "
                                    "predicted: 0.5 on the centred scale; null for a model decided by argmax")
    operating_point: OperatingPoint | None = Field(default=None, description="the calibrated operating point "
                                                   "behind the centred scale; null for a model decided by argmax")
    model: ModelRef
    inference_ms: float = Field(description="decode + preprocessing + model time on the server")
    notes: list[str] = Field(default_factory=list, description="about the input, e.g. 'multi-frame DICOM: first "
                                                                "frame of 3 analysed'")
    preview: str | None = Field(default=None, description="the decoded image as a PNG data URL: with ?preview=true, "
                                                      "and always for an image turned upright by its EXIF "
                                                      "Orientation (the heatmap is laid out on it)")
    heatmap: str | None = Field(default=None, description="with ?heatmap=true: PNG data URL, a square colour map "
                                "of where the model looked, to be stretched over the uploaded image")
    heatmap_class: str | None = Field(default=None, description="the class the heatmap explains (the prediction)")
    study_id: str | None = Field(default=None, description="the saved study, when the server keeps a study store")
    duplicate_of: str | None = Field(default=None, description="the first study of the same image (identical bytes): "
                                     "this upload repeats it; null when the image is new or no store is kept")


class ModelCard(ModelRef):
    # Other backends may add fields (e.g. the runtime); pass them through instead of dropping them.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    classes: list[str]
    positive_class: str | None
    threshold: float | None = Field(description="operating point on calibrated P(positive class)")
    threshold_rule: str | None = None
    operating_point: OperatingPoint | None = None
    temperature: float
    review_below_confidence: float
    preprocessing: dict[str, Any]
    training_data: str
    validation_metrics: dict[str, Any]
    site_calibration: dict[str, Any] | None = Field(
        default=None, description="the labelled site films the operating point was fitted on, if not validation")
    calibration: dict[str, Any] | None = Field(
        default=None, description="lineage of a recalibrated model: base_model_sha256 and base_version (the model "
                                  "it was calibrated from), weights_sha256, site and date (UTC)")
    training: dict[str, Any]
    input_check: dict[str, Any] | None = Field(
        default=None, description="whether the input check's feature statistics (adult films, non-radiographs) "
                                  "are loaded for this model, and if not, why and how to fit them")
    intended_use: str
    limitations: list[str]
    disclaimer: str


class StoreState(BaseModel):
    status: StoreStatus = Field(description="ok: the study store takes writes; failing: it does not; "
                                            "none: the server keeps no studies")
    problem: StoreProblem | None = Field(default=None, description="when failing: unavailable, timeout or disk full")


class HealthResponse(BaseModel):
    status: Literal["ok", "failing"] = Field(description="'ok' when the model is loaded and the store (if any) "
                                                         "takes writes; "
                                    "'failing' otherwise (HTTP 503)")
    model_loaded: bool
    store: StoreState
    version: str = Field(description="MediFlow version")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong with the request")


class LiveResponse(BaseModel):
    status: Literal["ok"] = Field(description="always 'ok': the process answers (readiness is /health)")


class ModelEvaluation(BaseModel):
    """`<checkpoint stem>.evaluation.json` as benchmarks/generalization.py wrote it, paths reduced to
    file names; the fields below are the ones it always writes, any others pass through."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: dict[str, Any] | None = Field(default=None, description="the model evaluated (architecture, sha256)")
    machine: str | None = Field(default=None, description="where the evaluation ran")
    seconds: int | float | None = Field(default=None, description="how long it took")
    data: str | None = Field(default=None, description="the data set evaluated on")
    validation: dict[str, Any] | None = Field(default=None, description="metrics on the validation split")
    test_dev: dict[str, Any] | None = Field(default=None, description="metrics on the development test split")


class AuditRow(BaseModel):
    id: int
    at: str = Field(description="UTC time with its zone (ISO 8601)")
    actor: str = Field(description="the API key's name; 'anonymous', '(no key)' or '(invalid key)'")
    method: str
    route: str = Field(description="route template, e.g. /api/studies/{study_id}/review")
    status_code: int
    study_id: str | None = Field(description="the study, as the API writes its ids (with dashes)")


class AuditPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[AuditRow]
