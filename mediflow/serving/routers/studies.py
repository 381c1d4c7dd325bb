"""The worklist API: studies (the saved analyses), refused uploads, stored images and their
heatmaps, and radiologists' reviews."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Security
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mediflow import DISCLAIMER
from mediflow.decision import REPORTED_SCALE, positive_index
from mediflow.errors import ImageDecodeError
from mediflow.inference.predictor import Predictor
from mediflow.serving.dependencies import (
    authenticated,
    get_inference,
    get_predictor,
    get_settings,
    get_store,
    model_loaded,
)
from mediflow.serving.errors import excerpt
from mediflow.serving.inference_thread import InferenceThread
from mediflow.serving.schemas import ErrorResponse, ModelRef
from mediflow.serving.settings import Settings
from mediflow.serving.studies import render_preview
from mediflow.serving.study_schemas import (
    RefusalList,
    RefusedInput,
    ReviewOut,
    ReviewRequest,
    StudyDetail,
    StudyHeatmap,
    StudyList,
    StudySummary,
)
from mediflow.store import repository
from mediflow.store.db import Store
from mediflow.store.duplicates import link_fields, same_images
from mediflow.store.models import Study

router = APIRouter(prefix="/api/studies", tags=["studies"],
                   dependencies=[Security(authenticated), Depends(model_loaded)],
                   responses={503: {"model": ErrorResponse, "description": "no study store, the study database "
                                                                           "failed, or the model is not loaded yet"}})
# Page offsets beyond this are refused (422): the databases' OFFSET is a signed 64-bit integer.
MAX_OFFSET = 2**31 - 1
# What GET /api/studies/{id}/image answers: the stored bytes as uploaded, or a PNG rendering.
IMAGE_CONTENT = {media_type: {"schema": {"type": "string", "format": "binary"}}
                 for media_type in ("image/jpeg", "image/png", "application/dicom", "application/octet-stream")}


def _summary(study: Study, has_image: bool, same: dict | None = None) -> dict[str, Any]:
    """`same`: same_images()'s answer for this study's page (links to earlier studies of the same bytes)."""
    return {
        **link_fields(study, (same or {}).get(study.id)),
        "id": study.id, "received_at": study.received_at, "source_format": study.source_format,
        "prediction": study.prediction, "confidence": study.confidence, "probability": study.priority,
        "uncertain": study.needs_review, "review_state": study.review_state, "review_label": study.review_label,
        "reviewer": study.reviewer, "reviewed_at": study.reviewed_at, "has_image": has_image,
        "input_check": study.input_check, "accession_number": study.accession_number,
        "study_date": study.study_date, "modality": study.modality,
    }


def _operating_point(study: Study) -> dict[str, Any] | None:
    """The study's calibrated operating point, as in the analysis response (None: decided by argmax)."""
    if study.calibrated_threshold is None:
        return None
    names = list(study.probabilities)
    # Binary studies only have a calibrated threshold; the positive class follows positive_index.
    positive = names[positive_index(names)]
    return {"positive_class": positive, "calibrated_threshold": study.calibrated_threshold, "scale": REPORTED_SCALE}


def _detail(session, study: Study) -> StudyDetail:
    return StudyDetail(
        **_summary(study, repository.has_image(session, study.id), same_images(session, [study])),
        pacs_delivery=repository.pacs_delivery(session, [study.id]).get(study.id),
        image_sha256=study.image_sha256, probabilities=study.probabilities, threshold=study.threshold,
        operating_point=_operating_point(study),
        margin=study.margin,
        model=ModelRef.of_study(study),
        study_instance_uid=study.study_instance_uid, sop_instance_uid=study.sop_instance_uid,
        patient_age=study.patient_age, patient_sex=study.patient_sex, review_note=study.review_note,
        reviews=[ReviewOut(id=r.id, label=r.label, state=r.state, note=r.note, reviewer=r.reviewer,
                           reviewed_at=r.reviewed_at, model_prediction=r.model_prediction)
                 for r in repository.reviews_of(session, study.id)],
        disclaimer=DISCLAIMER,
    )


def _not_found(study_id: uuid.UUID) -> HTTPException:
    return HTTPException(404, detail=f"no study with id {study_id}")


@router.get("", response_model=StudyList, summary="the worklist")
def list_studies(
    status: repository.StatusFilter = Query("unreviewed", description="review state to list"),
    sort: repository.SortKey = Query("priority", description="priority: most suspicious first; "
                                     "uncertainty: closest to the threshold first; received: newest first"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    store: Store = Depends(get_store),
) -> StudyList:
    with store.session() as s:
        total, rows = repository.list_studies(s, status=status, sort=sort, limit=limit, offset=offset)
        same = same_images(s, [st for st, _ in rows])
        delivery = repository.pacs_delivery(s, [st.id for st, _ in rows])
        return StudyList(total=total, limit=limit, offset=offset,
                         items=[StudySummary(**_summary(st, has, same), pacs_delivery=delivery.get(st.id))
                                for st, has in rows])


@router.get("/refused", response_model=RefusalList, summary="uploads the input check refused")
def list_refused(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                 store: Store = Depends(get_store)) -> RefusalList:
    """Newest first: when, what kind of file, and why no finding was given. No pixels are kept."""
    with store.session() as s:
        total, rows = repository.list_refusals(s, limit=limit, offset=offset)
        return RefusalList(total=total, limit=limit, offset=offset,
                           items=[RefusedInput(id=r.id, received_at=r.received_at, source_format=r.source_format,
                                               image_sha256=r.image_sha256, detail=r.detail,
                                               input_check=r.input_check)
                                  for r in rows])


@router.get("/{study_id}", response_model=StudyDetail, summary="one study",
            responses={404: {"model": ErrorResponse, "description": "no such study"}})
def get_study(study_id: uuid.UUID, store: Store = Depends(get_store)) -> StudyDetail:
    with store.session() as s:
        study = repository.get_study(s, study_id)
        if study is None:
            raise _not_found(study_id)
        return _detail(s, study)


@router.get("/{study_id}/image", response_class=Response, summary="the study's stored image",
            responses={200: {"description": "the uploaded bytes (JPEG, PNG, WebP, TIFF or DICOM), "
                                            "or with ?preview=true a PNG", "content": IMAGE_CONTENT},
                       404: {"model": ErrorResponse, "description": "no such study, or no image stored"},
                       422: {"model": ErrorResponse, "description": "the stored image cannot be rendered"}})
async def get_image(study_id: uuid.UUID,
                    preview: bool = Query(False, description="a PNG rendering (at most 1024 px) instead of "
                                                             "the original bytes; works for DICOM too"),
                    store: Store = Depends(get_store), settings: Settings = Depends(get_settings)) -> Response:
    data, media_type, _ = await run_in_threadpool(_stored_image, store, study_id)
    if not preview:
        return Response(data, media_type=media_type)
    try:
        png = await run_in_threadpool(render_preview, data, settings.max_pixels)
    except (ImageDecodeError, ImportError) as exc:
        raise HTTPException(422, detail=f"stored image cannot be rendered ({exc})") from None
    return Response(png, media_type="image/png")


def _stored_image(store: Store, study_id: uuid.UUID) -> tuple[bytes, str, ModelRef]:
    """The study's stored bytes, their media type and the model that made its finding; 404 otherwise."""
    with store.session() as s:
        study = repository.get_study(s, study_id)
        if study is None:
            raise _not_found(study_id)
        image = repository.get_image(s, study_id)
        if image is None:
            raise HTTPException(404, detail=f"no image stored for study {study_id} "
                                            "(the server stores images only with --store-images)")
        return image.data, image.media_type, ModelRef.of_study(study)


@router.get("/{study_id}/heatmap", response_model=StudyHeatmap, summary="where the model looks in the study",
            responses={404: {"model": ErrorResponse, "description": "no such study, or no image stored"},
                       422: {"model": ErrorResponse, "description": "the stored image cannot be decoded"}})
async def get_heatmap(study_id: uuid.UUID, store: Store = Depends(get_store),
                      predictor: Predictor = Depends(get_predictor), settings: Settings = Depends(get_settings),
                      inference: InferenceThread = Depends(get_inference)) -> StudyHeatmap:
    """Where the model now serving looks in the study's stored image: the overlay that
    `POST /api/vision/analyze?heatmap=true` returns for the same bytes."""
    data, _, stored_model = await run_in_threadpool(_stored_image, store, study_id)
    try:
        # The analyze endpoint's own path (decode, predict, overlay), on its inference thread.
        result = await inference.run(predictor.predict_bytes, data, name="stored image",
                                     max_pixels=settings.max_pixels, heatmap=True)
    except (ImageDecodeError, ImportError) as exc:  # ImportError: a DICOM without pydicom installed
        raise HTTPException(422, detail=f"stored image cannot be analysed ({exc})") from None
    model = ModelRef.model_validate(result["model"])
    note = None
    if stored_model != model:
        # The map explains the current model's reading, which may differ from the stored finding's.
        note = ("This map comes from the model now serving "
                f"({_model_name(model)}), not from the model that made the stored "
                f"finding ({_model_name(stored_model)}).")
    return StudyHeatmap(heatmap=result["heatmap"], heatmap_class=result["heatmap_class"], model=model, note=note)


def _model_name(model: ModelRef) -> str:
    return f"{model.architecture} {model.version}, sha256 {model.sha256[:12]}"


@router.post("/{study_id}/review", response_model=StudyDetail, summary="record a radiologist's read",
             responses={404: {"model": ErrorResponse, "description": "no such study"},
                        422: {"description": "label not a class name"}})
def review_study(study_id: uuid.UUID, body: ReviewRequest, store: Store = Depends(get_store),
                 predictor: Predictor = Depends(get_predictor), actor: str = Security(authenticated)) -> StudyDetail:
    classes = list(predictor.class_names)
    label = body.label.strip()
    if label not in classes:
        raise HTTPException(422, detail=f"label '{excerpt(body.label)}' is not one of the model's classes: "
                                        f"{', '.join(classes)}")
    note = (body.note or "").strip() or None
    with store.session() as s:
        review = repository.add_review(s, study_id, label=label, note=note, reviewer=actor)
        if review is None:
            raise _not_found(study_id)
    with store.session() as s:
        return _detail(s, repository.get_study(s, study_id))
