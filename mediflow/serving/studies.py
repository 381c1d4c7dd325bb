"""The clinical workflow on the API: each analysis saved as a study, the worklist, reviews.

`install(app, settings)` is the one call create_app makes: it opens (and migrates) the store when
a database URL is set, loads API keys, adds the access/audit middleware and these routes.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mediflow import DISCLAIMER
from mediflow.data.images import decode_image, sniff_format
from mediflow.data.preview import preview_png
from mediflow.decision import REPORTED_SCALE, positive_index
from mediflow.errors import ImageDecodeError
from mediflow.serving.auth import ANONYMOUS, AccessMiddleware, load_api_keys, route_template
from mediflow.serving.errors import excerpt
from mediflow.serving.health import StoreHealth
from mediflow.serving.settings import Settings
from mediflow.serving.study_schemas import (RefusalList, ReviewRequest, StudyDetail, StudyHeatmap, StudyList,
                                            StudySummary)
from mediflow.store import repository
from mediflow.store.db import Store, describe_url, failure_kind
from mediflow.store.duplicates import link_fields, same_images
from mediflow.store.models import Study

log = logging.getLogger("mediflow.serve")
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff",
               "dicom": "application/dicom"}

router = APIRouter(prefix="/api/studies", tags=["studies"])
# Page offsets beyond this are refused (422): the databases' OFFSET is a signed 64-bit integer.
MAX_OFFSET = 2**31 - 1


def install(app: FastAPI, settings: Settings) -> None:
    app.state.api_keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    keys = app.state.api_keys
    # Whether callers must identify themselves, and how many may: never the keys or their names.
    log.info("API keys %s", f"on: {len(keys)} key{'s' if len(keys) != 1 else ''} configured; every /api call needs "
             "one" if keys else "off: /api calls are anonymous (make a key with `mediflow keys new NAME`)")
    url = configured_database_url(settings.database_url)
    app.state.store = (Store.open(url, store_images=settings.store_images, timeout_s=settings.db_timeout_s)
                       if url else None)
    app.state.store_health = StoreHealth()
    if url:
        log.info("study store %s; uploaded images %s", describe_url(url),
                 "kept (--store-images)" if settings.store_images else "not kept")
    app.add_middleware(AccessMiddleware)
    app.include_router(router)
    app.add_exception_handler(SQLAlchemyError, database_unavailable)


def configured_database_url(value: str | None) -> str | None:
    """The setting, with '' and 'none' meaning no store."""
    return None if value is None or value.strip().lower() in ("", "none") else value.strip()


STORE_PROBLEMS = {
    "unavailable": "the study database is unavailable",
    "timeout": "the study database did not answer in time",
    "disk full": "the study database's disk is full",
}


async def database_unavailable(request: Request, exc: SQLAlchemyError) -> JSONResponse:
    """A store error as the client should see it: 422 for a value the database refuses (not an
    outage: retrying will not help), else 503 with Retry-After. One log line per failure, with its kind."""
    kind = failure_kind(exc)
    request.state.storage_failed = True  # the audit row would fail the same way (auth.py skips it)
    log.error("storage failure (%s): %s on %s %s", kind, type(exc).__name__, request.method,
              route_template(request))
    if kind == "bad input":
        return JSONResponse(status_code=422, content={"detail": "the study database refused a value in this "
                                                                f"request ({type(exc).__name__}); nothing was saved"})
    request.app.state.store_health.failed(kind)
    retry = request.app.state.settings.retry_after_s
    outcome = ("this request may not have been completed" if kind == "timeout"
               else "nothing was saved by this request")
    return JSONResponse(status_code=503, headers={"Retry-After": str(retry)},
                        content={"detail": f"{STORE_PROBLEMS[kind]} ({type(exc).__name__}); {outcome}; "
                                           f"retry in {retry} seconds"})


# -- saving analyses -------------------------------------------------------------------------------
def source_info(data: bytes, header: dict[str, Any] | None) -> repository.SourceInfo:
    """Hash and format of an upload, plus DICOM identifiers and demographics from `header` (the
    decoder's DecodedImage.dicom_header: the file is not parsed again; None for other formats)."""
    fmt = sniff_format(data) or "unknown"
    info = repository.SourceInfo(image_sha256=hashlib.sha256(data).hexdigest(), source_format=fmt)
    if header is not None:
        meta = header

        def text(key: str, limit: int) -> str | None:
            # NUL bytes (DICOM pads some values with them; a damaged header may hold more) are
            # dropped: PostgreSQL text cannot hold them, and the film must still get its finding.
            value = meta.get(key)
            value = None if value is None else str(value).replace("\x00", "").strip()
            return value[:limit] if value else None

        info.study_instance_uid = text("StudyInstanceUID", 64)
        info.sop_instance_uid = text("SOPInstanceUID", 64)
        info.patient_age = text("PatientAge", 16)
        info.patient_sex = text("PatientSex", 16)
    return info


async def record_analysis(request: Request, data: bytes, result: dict[str, Any],
                          header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save an analysis as a study when a store is configured; the result gains `study_id`.
    `header`: the upload's DICOM header fields as the decoder read them (see source_info)."""
    store: Store | None = request.app.state.store
    if store is None:
        return result
    predictor = request.app.state.predictor
    positive = predictor.class_names[predictor.pos] if predictor.pos is not None else None

    route = route_template(request)

    def save() -> uuid.UUID:
        source = source_info(data, header)
        with store.session() as s:
            study = repository.add_study(
                s, source, result, positive_class=positive,
                image=data if store.store_images else None,
                media_type=MEDIA_TYPES.get(source.source_format, "application/octet-stream"))
            # The audit row in the same transaction: a study is never stored without its audit
            # entry, and one commit instead of two (the access middleware skips this request).
            actor = getattr(request.state, "actor", ANONYMOUS)
            repository.add_audit(s, actor=actor, method=request.method, route=route, status_code=200,
                                 study_id=study.id)
            s.flush()
            # The same bytes uploaded before: linked to the first study of them, not a silent duplicate.
            return study.id, same_images(s, [study]).get(study.id)

    study_id, same = await run_in_threadpool(save)
    request.app.state.store_health.succeeded()
    request.state.study_id = study_id
    request.state.audited = True
    duplicate_of = same.duplicate_of(study_id) if same is not None else None
    return {**result, "study_id": str(study_id), "duplicate_of": str(duplicate_of) if duplicate_of else None}


async def record_refusal(request: Request, data: bytes, body: dict[str, Any],
                         header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keep a record (no pixels) of an upload the input check refused, when a store is configured;
    `body` ({"detail", "input_check"}) gains `refusal_id`. `header`: as for record_analysis."""
    store: Store | None = request.app.state.store
    if store is None:
        return body
    model_sha = request.app.state.predictor.info.sha256

    def save() -> uuid.UUID:
        with store.session() as s:
            return repository.add_refusal(s, source_info(data, header), detail=body["detail"],
                                          input_check=body["input_check"], model_sha256=model_sha).id

    return {**body, "refusal_id": str(await run_in_threadpool(save))}


# -- the worklist API ------------------------------------------------------------------------------
def _store(request: Request) -> Store:
    store = request.app.state.store
    if store is None:
        raise HTTPException(503, detail="this server keeps no studies: start it with a database "
                                        "(--database-url or MEDIFLOW_DATABASE_URL)")
    return store


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


def _detail(session, study: Study) -> dict[str, Any]:
    return {
        **_summary(study, repository.has_image(session, study.id), same_images(session, [study])),
        "pacs_delivery": repository.pacs_delivery(session, [study.id]).get(study.id),
        "image_sha256": study.image_sha256, "probabilities": study.probabilities, "threshold": study.threshold,
        "operating_point": _operating_point(study),
        "margin": study.margin,
        "model": {"architecture": study.model_architecture, "version": study.model_version,
                  "sha256": study.model_sha256},
        "study_instance_uid": study.study_instance_uid, "sop_instance_uid": study.sop_instance_uid,
        "patient_age": study.patient_age, "patient_sex": study.patient_sex, "review_note": study.review_note,
        "reviews": [{"id": r.id, "label": r.label, "state": r.state, "note": r.note, "reviewer": r.reviewer,
                     "reviewed_at": r.reviewed_at, "model_prediction": r.model_prediction}
                    for r in repository.reviews_of(session, study.id)],
        "disclaimer": DISCLAIMER,
    }


def _not_found(study_id: uuid.UUID) -> HTTPException:
    return HTTPException(404, detail=f"no study with id {study_id}")


@router.get("", response_model=StudyList, summary="the worklist")
def list_studies(
    request: Request,
    status: repository.StatusFilter = Query("unreviewed", description="review state to list"),
    sort: repository.SortKey = Query("priority", description="priority: most suspicious first; "
                                     "uncertainty: closest to the threshold first; received: newest first"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> dict[str, Any]:
    with _store(request).session() as s:
        total, rows = repository.list_studies(s, status=status, sort=sort, limit=limit, offset=offset)
        same = same_images(s, [st for st, _ in rows])
        delivery = repository.pacs_delivery(s, [st.id for st, _ in rows])
        return {"total": total, "limit": limit, "offset": offset,
                "items": [StudySummary(**_summary(st, has, same), pacs_delivery=delivery.get(st.id))
                          for st, has in rows]}


@router.get("/refused", response_model=RefusalList, summary="uploads the input check refused")
def list_refused(request: Request, limit: int = Query(50, ge=1, le=500),
                 offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> dict[str, Any]:
    """Newest first: when, what kind of file, and why no finding was given. No pixels are kept."""
    with _store(request).session() as s:
        total, rows = repository.list_refusals(s, limit=limit, offset=offset)
        return {"total": total, "limit": limit, "offset": offset,
                "items": [{"id": r.id, "received_at": r.received_at, "source_format": r.source_format,
                           "image_sha256": r.image_sha256, "detail": r.detail, "input_check": r.input_check}
                          for r in rows]}


@router.get("/{study_id}", response_model=StudyDetail, responses={404: {"description": "no such study"}})
def get_study(request: Request, study_id: uuid.UUID) -> dict[str, Any]:
    with _store(request).session() as s:
        study = repository.get_study(s, study_id)
        if study is None:
            raise _not_found(study_id)
        return _detail(s, study)


@router.get("/{study_id}/image", responses={404: {"description": "no such study, or no image stored"}},
            response_class=Response)
async def get_image(request: Request, study_id: uuid.UUID,
                    preview: bool = Query(False, description="a PNG rendering (at most 1024 px) instead of "
                                                             "the original bytes; works for DICOM too")) -> Response:
    data, media_type, _ = await run_in_threadpool(_stored_image, _store(request), study_id)
    if not preview:
        return Response(data, media_type=media_type)
    try:
        png = await run_in_threadpool(_render_preview, data, request.app.state.settings.max_pixels)
    except (ImageDecodeError, ImportError) as exc:
        raise HTTPException(422, detail=f"stored image cannot be rendered ({exc})") from None
    return Response(png, media_type="image/png")


def _render_preview(data: bytes, max_pixels: int) -> bytes:
    return preview_png(decode_image(data, name="stored image", max_pixels=max_pixels).image)


def _stored_image(store: Store, study_id: uuid.UUID) -> tuple[bytes, str, dict[str, str]]:
    """The study's stored bytes, their media type and the model that made its finding; 404 otherwise."""
    with store.session() as s:
        study = repository.get_study(s, study_id)
        if study is None:
            raise _not_found(study_id)
        image = repository.get_image(s, study_id)
        if image is None:
            raise HTTPException(404, detail=f"no image stored for study {study_id} "
                                            "(the server stores images only with --store-images)")
        model = {"architecture": study.model_architecture, "version": study.model_version,
                 "sha256": study.model_sha256}
        return image.data, image.media_type, model


@router.get("/{study_id}/heatmap", response_model=StudyHeatmap,
            responses={404: {"description": "no such study, or no image stored"},
                       422: {"description": "the stored image cannot be decoded"},
                       503: {"description": "no study store, or the model is not loaded yet"}})
async def get_heatmap(request: Request, study_id: uuid.UUID) -> dict[str, Any]:
    """Where the model now serving looks in the study's stored image: the overlay that
    `POST /api/vision/analyze?heatmap=true` returns for the same bytes."""
    store = _store(request)
    data, _, stored_model = await run_in_threadpool(_stored_image, store, study_id)
    predictor = request.app.state.predictor
    if predictor is None:
        raise HTTPException(503, detail="model not loaded yet")
    max_pixels = request.app.state.settings.max_pixels
    try:
        # The analyze endpoint's own path (decode, predict, overlay), on its inference thread.
        result = await request.app.state.inference.run(predictor.predict_bytes, data, name="stored image",
                                                       max_pixels=max_pixels, heatmap=True)
    except (ImageDecodeError, ImportError) as exc:  # ImportError: a DICOM without pydicom installed
        raise HTTPException(422, detail=f"stored image cannot be analysed ({exc})") from None
    body = {"heatmap": result["heatmap"], "heatmap_class": result["heatmap_class"], "model": result["model"]}
    if stored_model != result["model"]:
        # The map explains the current model's reading, which may differ from the stored finding's.
        body["note"] = ("This map comes from the model now serving "
                        f"({_model_name(result['model'])}), not from the model that made the stored "
                        f"finding ({_model_name(stored_model)}).")
    return body


def _model_name(model: dict[str, str]) -> str:
    return f"{model['architecture']} {model['version']}, sha256 {model['sha256'][:12]}"


@router.post("/{study_id}/review", response_model=StudyDetail,
             responses={404: {"description": "no such study"}, 422: {"description": "label not a class name"}})
def review_study(request: Request, study_id: uuid.UUID, body: ReviewRequest) -> dict[str, Any]:
    classes = list(request.app.state.predictor.class_names)
    label = body.label.strip()
    if label not in classes:
        raise HTTPException(422, detail=f"label '{excerpt(body.label)}' is not one of the model's classes: "
                                        f"{', '.join(classes)}")
    note = (body.note or "").strip() or None
    with _store(request).session() as s:
        review = repository.add_review(s, study_id, label=label, note=note, reviewer=request.state.actor)
        if review is None:
            raise _not_found(study_id)
    with _store(request).session() as s:
        return _detail(s, repository.get_study(s, study_id))
