"""Saving the clinical workflow's records: each analysis as a study (with its audit row), each
refused upload, and a store failure as the client sees it. The worklist's routes are in
routers/studies.py."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mediflow.data.images import decode_image, sniff_format
from mediflow.data.preview import preview_png
from mediflow.inference.predictor import Predictor
from mediflow.serving.auth import route_template
from mediflow.serving.health import StoreHealth
from mediflow.serving.settings import Settings
from mediflow.store import repository
from mediflow.store.db import Store, describe_url, failure_kind
from mediflow.store.duplicates import same_images

log = logging.getLogger("mediflow.serve")
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff",
               "dicom": "application/dicom"}


def open_store(settings: Settings) -> Store | None:
    """The study store the settings name (opened and migrated), or None when they name none."""
    url = configured_database_url(settings.database_url)
    if url is None:
        return None
    store = Store.open(url, store_images=settings.store_images, timeout_s=settings.db_timeout_s)
    log.info("study store %s; uploaded images %s", describe_url(url),
             "kept (--store-images)" if settings.store_images else "not kept")
    return store


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

        def text(key: str, limit: int) -> str | None:
            # NUL bytes (DICOM pads some values with them; a damaged header may hold more) are
            # dropped: PostgreSQL text cannot hold them, and the film must still get its finding.
            value = header.get(key)
            value = None if value is None else str(value).replace("\x00", "").strip()
            return value[:limit] if value else None

        info.study_instance_uid = text("StudyInstanceUID", 64)
        info.sop_instance_uid = text("SOPInstanceUID", 64)
        info.patient_age = text("PatientAge", 16)
        info.patient_sex = text("PatientSex", 16)
    return info


async def record_analysis(request: Request, store: Store, store_health: StoreHealth, predictor: Predictor,
                          actor: str, data: bytes, result: dict[str, Any],
                          header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save an analysis as a study, with the call's audit row; the result gains `study_id` and
    `duplicate_of`. `header`: the upload's DICOM header fields as the decoder read them (see source_info)."""
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
            # entry, and one commit instead of two (the audit middleware skips this request).
            repository.add_audit(s, actor=actor, method=request.method, route=route, status_code=200,
                                 study_id=study.id)
            s.flush()
            # The same bytes uploaded before: linked to the first study of them, not a silent duplicate.
            return study.id, same_images(s, [study]).get(study.id)

    study_id, same = await run_in_threadpool(save)
    store_health.succeeded()
    request.state.study_id = study_id
    request.state.audited = True
    duplicate_of = same.duplicate_of(study_id) if same is not None else None
    return {**result, "study_id": str(study_id), "duplicate_of": str(duplicate_of) if duplicate_of else None}


async def record_refusal(store: Store, predictor: Predictor, data: bytes, body: dict[str, Any],
                         header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keep a record (no pixels) of an upload the input check refused; `body` ({"detail",
    "input_check"}) gains `refusal_id`. `header`: as for record_analysis."""
    model_sha = predictor.info.sha256

    def save() -> uuid.UUID:
        with store.session() as s:
            return repository.add_refusal(s, source_info(data, header), detail=body["detail"],
                                          input_check=body["input_check"], model_sha256=model_sha).id

    return {**body, "refusal_id": str(await run_in_threadpool(save))}


# -- stored images ---------------------------------------------------------------------------------
def render_preview(data: bytes, max_pixels: int) -> bytes:
    """A stored image as a PNG (at most 1024 px): browsers cannot show DICOM."""
    return preview_png(decode_image(data, name="stored image", max_pixels=max_pixels).image)
