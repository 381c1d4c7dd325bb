"""The queries the API and the CLI run against the store; each takes an open Session."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from mediflow.store.models import (
    AuditEntry,
    DicomInstance,
    DicomResult,
    RefusedInput,
    Review,
    Study,
    StudyImage,
    utcnow,
)
from mediflow.store.triage import triage_scores

SortKey = Literal["priority", "uncertainty", "received"]
StatusFilter = Literal["unreviewed", "reviewed", "confirmed", "corrected", "all"]

_ORDER = {
    "priority": (Study.priority.desc(), Study.received_at.asc()),
    "uncertainty": (Study.margin.asc(), Study.received_at.asc()),
    "received": (Study.received_at.desc(),),
}


@dataclass
class SourceInfo:
    """What is kept about an upload besides its pixels: never a file name."""

    image_sha256: str
    source_format: str
    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    patient_age: str | None = None
    patient_sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    modality: str | None = None


def add_study(session: Session, source: SourceInfo, result: dict[str, Any], *, positive_class: str | None,
              image: bytes | None = None, media_type: str = "application/octet-stream") -> Study:
    priority, margin = triage_scores(result, positive_class)
    model = result["model"]
    study = Study(
        image_sha256=source.image_sha256, source_format=source.source_format,
        study_instance_uid=source.study_instance_uid, sop_instance_uid=source.sop_instance_uid,
        patient_age=source.patient_age, patient_sex=source.patient_sex,
        accession_number=source.accession_number, study_date=source.study_date, modality=source.modality,
        prediction=result["prediction"], confidence=float(result["confidence"]),
        probabilities=dict(result["probabilities"]), threshold=result.get("threshold"),
        calibrated_threshold=(result.get("operating_point") or {}).get("calibrated_threshold"),
        model_architecture=model["architecture"], model_version=model["version"], model_sha256=model["sha256"],
        needs_review=bool(result["needs_review"]), priority=priority, margin=margin,
        review_state="unreviewed", input_check=result.get("input_check"),
    )
    if image is not None:
        study.image = StudyImage(media_type=media_type, data=image)
    session.add(study)
    session.flush()
    return study


def add_refusal(session: Session, source: SourceInfo, *, detail: str, input_check: dict[str, Any],
                model_sha256: str) -> RefusedInput:
    """Record an upload the input check refused; never its pixels."""
    row = RefusedInput(image_sha256=source.image_sha256, source_format=source.source_format,
                       study_instance_uid=source.study_instance_uid, sop_instance_uid=source.sop_instance_uid,
                       detail=detail, input_check=input_check, model_sha256=model_sha256)
    session.add(row)
    session.flush()
    return row


def list_refusals(session: Session, *, limit: int = 50, offset: int = 0) -> tuple[int, list[RefusedInput]]:
    """(total, one page of refused uploads, newest first)."""
    total = session.scalar(select(func.count()).select_from(RefusedInput))
    rows = session.scalars(select(RefusedInput).order_by(RefusedInput.received_at.desc(), RefusedInput.id)
                           .limit(limit).offset(offset))
    return int(total or 0), list(rows)


def list_studies(session: Session, *, status: StatusFilter = "unreviewed", sort: SortKey = "priority",
                 limit: int = 50, offset: int = 0) -> tuple[int, list[tuple[Study, bool]]]:
    """(total matching, one page of (study, has a stored image))."""
    query = select(Study)
    if status == "reviewed":
        query = query.where(Study.review_state != "unreviewed")
    elif status != "all":
        query = query.where(Study.review_state == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    stored = exists().where(StudyImage.study_id == Study.id).label("has_image")
    rows = session.execute(query.add_columns(stored).order_by(*_ORDER[sort], Study.id).limit(limit).offset(offset))
    return int(total or 0), [(study, bool(has)) for study, has in rows]


def get_study(session: Session, study_id: uuid.UUID, *, for_update: bool = False) -> Study | None:
    query = select(Study).where(Study.id == study_id)
    if for_update:
        # PostgreSQL locks the row so concurrent reviews of one study queue; SQLite ignores this
        # and serializes writers with BEGIN IMMEDIATE instead (see db.py).
        query = query.with_for_update()
    return session.scalars(query).first()


def has_image(session: Session, study_id: uuid.UUID) -> bool:
    return session.scalar(select(func.count()).where(StudyImage.study_id == study_id)) > 0


def get_image(session: Session, study_id: uuid.UUID) -> StudyImage | None:
    return session.get(StudyImage, study_id)


def add_review(session: Session, study_id: uuid.UUID, *, label: str, note: str | None, reviewer: str) -> Review | None:
    """Append a review and make it the study's current read. None when the study does not exist.

    The row lock is taken before the review's timestamp is read, so of two concurrent reviews the
    one committed later is also the later in time, and it becomes current.
    """
    study = get_study(session, study_id, for_update=True)
    if study is None:
        return None
    review = Review(study_id=study.id, label=label, note=note, reviewer=reviewer, reviewed_at=utcnow(),
                    state="confirmed" if label == study.prediction else "corrected",
                    model_prediction=study.prediction)
    session.add(review)
    session.flush()
    if study.reviewed_at is None or review.reviewed_at >= study.reviewed_at:
        study.review_state = review.state
        study.review_label = review.label
        study.review_note = review.note
        study.reviewer = review.reviewer
        study.reviewed_at = review.reviewed_at
        study.current_review_id = review.id
    return review


def reviews_of(session: Session, study_id: uuid.UUID) -> list[Review]:
    return list(session.scalars(select(Review).where(Review.study_id == study_id).order_by(Review.id)))


def add_audit(session: Session, *, actor: str, method: str, route: str, status_code: int,
              study_id: uuid.UUID | None = None) -> None:
    session.add(AuditEntry(actor=actor, method=method, route=route[:200], status_code=status_code,
                           study_id=study_id))


def audit_entries(session: Session, *, study_id: uuid.UUID | None = None) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id)
    if study_id is not None:
        query = query.where(AuditEntry.study_id == study_id)
    return list(session.scalars(query))


def reviewed_studies(session: Session) -> tuple[list[Study], int]:
    """(reviewed studies that have stored bytes, count of reviewed studies without). Images are not
    loaded here: the export fetches them one at a time with get_image."""
    with_image = list(session.scalars(
        select(Study).join(StudyImage, StudyImage.study_id == Study.id)
        .where(Study.review_state != "unreviewed").order_by(Study.received_at, Study.id)
    ))
    reviewed = session.scalar(select(func.count()).where(Study.review_state != "unreviewed"))
    return with_image, int(reviewed or 0) - len(with_image)


def pacs_delivery(session: Session, study_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """For studies the DICOM node analysed: 'sent' when every result object reached the PACS,
    'failed' when the PACS refused one for good, else 'waiting'. Other studies are absent."""
    if not study_ids:
        return {}
    rows = session.execute(select(DicomInstance.study_id, DicomResult.state)
                           .join(DicomResult, DicomResult.instance_id == DicomInstance.id)
                           .where(DicomInstance.study_id.in_(study_ids)))
    out: dict[uuid.UUID, str] = {}
    rank = {"sent": 0, "waiting": 1, "failed": 2}
    for study_id, state in rows:
        label = state if state in ("sent", "failed") else "waiting"
        if rank[label] >= rank.get(out.get(study_id, "sent"), 0):
            out[study_id] = label
    return out
