"""`GET /api/model` (the model card) and `GET /api/model/evaluation` (its latest evaluation)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Security
from pydantic import ValidationError

from mediflow.inference.predictor import Predictor
from mediflow.serving.dependencies import authenticated, get_predictor, model_loaded
from mediflow.serving.evaluation import read_evaluation
from mediflow.serving.public import public_view
from mediflow.serving.schemas import ErrorResponse, ModelCard, ModelEvaluation

router = APIRouter(prefix="/api/model", tags=["model"],
                   dependencies=[Security(authenticated), Depends(model_loaded)])


@router.get("", response_model=ModelCard, summary="the model card of the model serving")
def model_card(predictor: Predictor = Depends(get_predictor)) -> dict[str, Any]:
    return public_view(predictor.model_card())


@router.get("/evaluation", response_model=ModelEvaluation, response_model_exclude_unset=True,
            summary="the latest evaluation of the model serving",
            responses={404: {"model": ErrorResponse, "description": "no evaluation file next to the served "
                                                                    "checkpoint"},
                       503: {"model": ErrorResponse, "description": "the file is damaged"}})
def model_evaluation(predictor: Predictor = Depends(get_predictor)) -> ModelEvaluation:
    """The latest evaluation of the served model: `<checkpoint stem>.evaluation.json` next to the
    checkpoint (written by benchmarks/generalization.py), as it is on disk."""
    try:
        return ModelEvaluation.model_validate(public_view(read_evaluation(predictor.info.path)))
    except ValidationError as exc:
        field = ".".join(map(str, exc.errors()[0]["loc"]))
        raise HTTPException(503, detail=f"the evaluation file is damaged: its field {field!r} has the "
                                        "wrong type") from None
