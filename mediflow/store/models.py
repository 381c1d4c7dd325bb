"""The schema: studies (one per analysis), their reviews (append-only), stored images and an audit log.

No column holds a file name or a patient name: uploads are identified by a random UUID and the
SHA-256 of their bytes. Patient age and sex (from DICOM, when present) are kept for the reading
radiologist and are never logged.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

REVIEW_STATES = ("unreviewed", "confirmed", "corrected")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    # 'jpeg', 'png', 'webp', 'tiff' or 'dicom' (by content); never the uploaded file name, which may name the patient.
    source_format: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    patient_age: Mapped[str | None] = mapped_column(String(16))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    # What a reader needs to find a DICOM study in the PACS (None for uploads without them).
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modality: Mapped[str | None] = mapped_column(String(16))

    # The model's result, as returned to the caller.
    prediction: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    # `threshold` is on the reported scale (0.5: probabilities are centred on the operating point,
    # see mediflow/decision.py); `calibrated_threshold` is that operating point on calibrated P.
    threshold: Mapped[float | None] = mapped_column(Float)
    calibrated_threshold: Mapped[float | None] = mapped_column(Float)
    model_architecture: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    model_sha256: Mapped[str] = mapped_column(String(64))
    needs_review: Mapped[bool] = mapped_column(Boolean)
    # The input check's verdict as returned ({"status": "ok" | "warning", "reasons": [...]}); None for
    # studies saved before the check existed.
    input_check: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Worklist orderings, computed once at analysis time so they can be sorted in SQL (see triage.py).
    priority: Mapped[float] = mapped_column(Float, index=True)
    margin: Mapped[float] = mapped_column(Float, index=True)

    # The current read: a copy of the latest row in `reviews`.
    review_state: Mapped[str] = mapped_column(String(16), default="unreviewed", index=True)
    review_label: Mapped[str | None] = mapped_column(String(64))
    review_note: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(String(100))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    current_review_id: Mapped[int | None] = mapped_column(Integer)

    reviews: Mapped[list[Review]] = relationship(back_populates="study", order_by="Review.id",
                                                   cascade="all, delete-orphan")
    image: Mapped[StudyImage | None] = relationship(back_populates="study", cascade="all, delete-orphan")


class Review(Base):
    """Every read ever recorded; rows are only inserted, never updated."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(100))
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    model_prediction: Mapped[str] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="reviews")


class StudyImage(Base):
    """The uploaded bytes, kept only when the server runs with --store-images."""

    __tablename__ = "study_images"

    study_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)

    study: Mapped[Study] = relationship(back_populates="image")


class RefusedInput(Base):
    """An upload the input check refused (no finding was given): when, what kind of file, why. No
    pixels are kept, whatever --store-images says: there is nothing for a reader to review."""

    __tablename__ = "refused_inputs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    source_format: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    # {"status": "rejected", "reasons": [{"code", "message", "severity"}, ...]}
    input_check: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_sha256: Mapped[str] = mapped_column(String(64))


class DicomInstance(Base):
    """An instance received by `mediflow dicom-node`, and the queue of analyses.

    One row per SOP Instance UID, ever: a film the PACS sends again is recognised and adds nothing.
    `state`: queued -> analysing (leased to one worker) -> analysed | refused | failed. `data` holds
    the bytes only until the analysis is done; a refused instance never keeps them.
    """

    __tablename__ = "dicom_instances"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modality: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    # Deferred: a film is megabytes; only the claim that hands it to a worker loads it.
    data: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    study_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"))


class DicomResult(Base):
    """A result object (SR or SC) waiting for, or past, delivery to the PACS.

    `state`: pending -> sending (leased) -> sent | failed; a failed delivery goes back to pending
    with `next_attempt_at` pushed out, so a destination that is down keeps its results queued.
    """

    __tablename__ = "dicom_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dicom_instances.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Who called which API route, when, and with what outcome. No request bodies, no pixel data."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(10))
    route: Mapped[str] = mapped_column(String(200))
    status_code: Mapped[int] = mapped_column(Integer)
    study_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)


