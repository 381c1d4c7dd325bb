"""The node's durable queue in the study store: received instances to analyse, results to deliver.

A worker claims a row by leasing it (state, worker id and a lease deadline, in one short
transaction). On PostgreSQL the candidate row is picked with `SELECT ... FOR UPDATE SKIP LOCKED`,
so several node processes split the queue and never claim one row twice; on SQLite, where every
write transaction starts with BEGIN IMMEDIATE (store/db.py), the claim is one atomic update.
A row whose worker died is claimed again once its lease runs out (at once on SQLite, where one
node owns the file: see `release_stale_leases`). Finishing checks the lease is still held, so a
result is recorded once.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from mediflow.dicom_node.admission import Refusal
from mediflow.store import repository
from mediflow.store.db import Store
from mediflow.store.models import DicomInstance, DicomResult, utcnow

MAX_ANALYSIS_ATTEMPTS = 3  # a film that kills its worker this often is set aside, not retried forever


@dataclass
class Received:
    """What the SCP keeps of a received instance besides its bytes."""

    calling_ae: str
    sop_instance_uid: str
    sop_class_uid: str | None
    study_instance_uid: str | None
    accession_number: str | None
    study_date: str | None
    modality: str | None


@dataclass
class Claimed:
    id: Any
    data: bytes
    attempts: int


def _source(received: Received | DicomInstance, data: bytes) -> repository.SourceInfo:
    return repository.SourceInfo(image_sha256=hashlib.sha256(data).hexdigest(), source_format="dicom",
                                 study_instance_uid=received.study_instance_uid,
                                 sop_instance_uid=received.sop_instance_uid,
                                 accession_number=received.accession_number, study_date=received.study_date,
                                 modality=received.modality)


def _row(received: Received, **fields) -> DicomInstance:
    return DicomInstance(calling_ae=received.calling_ae, sop_instance_uid=received.sop_instance_uid,
                         sop_class_uid=received.sop_class_uid, study_instance_uid=received.study_instance_uid,
                         accession_number=received.accession_number, study_date=received.study_date,
                         modality=received.modality, attempts=0, **fields)


def is_result_uid(store: Store, sop_instance_uid: str) -> bool:
    with store.session() as s:
        return s.scalar(select(func.count()).where(DicomResult.sop_instance_uid == sop_instance_uid)) > 0


def enqueue(store: Store, received: Received, data: bytes) -> bool:
    """Keep a received film for analysis. False when this SOP Instance UID was received before
    (a re-sent film adds nothing)."""
    try:
        with store.session() as s:
            s.add(_row(received, state="queued", data=data))
        return True
    except IntegrityError:
        return False


def refuse(store: Store, received: Received, data: bytes, refusal: Refusal, *, model_sha256: str) -> bool:
    """Record a refused instance (no bytes kept) in the node's table and the worklist's refused list.
    False when it was received before."""
    try:
        with store.session() as s:
            s.add(_row(received, state="refused", reason=f"{refusal.code}: {refusal.message}", finished_at=utcnow()))
            s.flush()
            repository.add_refusal(s, _source(received, data), detail=f"not analysed: {refusal.message}",
                                   input_check=refusal.input_check(), model_sha256=model_sha256)
        return True
    except IntegrityError:
        return False


def _lease_filter(model, now: datetime, states: tuple[str, str]):
    waiting, leased = states
    return or_(model.state == waiting, (model.state == leased) & (model.lease_until < now))


def _locked(query, session: Session):
    return query.with_for_update(skip_locked=True) if session.bind.dialect.name == "postgresql" else query


def claim_instances(store: Store, worker: str, lease_s: float, limit: int = 1) -> list[Claimed]:
    """Lease up to `limit` queued instances, oldest first, to `worker` in one transaction; [] when
    there is none. An instance tried before (its worker died, or its lease ran out) is claimed on
    its own, so that a film that kills its worker does not use up its batch-mates' attempts."""
    with store.session() as s:
        now = utcnow()
        query = (select(DicomInstance).options(undefer(DicomInstance.data))
                 .where(_lease_filter(DicomInstance, now, ("queued", "analysing")))
                 .order_by(DicomInstance.received_at).limit(max(limit, 1)))
        out: list[Claimed] = []
        for row in s.scalars(_locked(query, s)):
            if out and row.attempts > 0:
                break  # locked rows left untouched are free again at commit
            row.state, row.worker, row.lease_until = "analysing", worker, now + timedelta(seconds=lease_s)
            row.attempts += 1
            if row.attempts > MAX_ANALYSIS_ATTEMPTS:
                row.state, row.reason, row.data, row.finished_at = (
                    "failed", f"analysis did not finish in {MAX_ANALYSIS_ATTEMPTS} attempts", None, now)
                continue
            out.append(Claimed(row.id, row.data, row.attempts))
            if row.attempts > 1:
                break
        return out


def claim_instance(store: Store, worker: str, lease_s: float) -> Claimed | None:
    """Lease the oldest queued instance to `worker`; None when there is none."""
    claimed = claim_instances(store, worker, lease_s, limit=1)
    return claimed[0] if claimed else None


def _owned(s: Session, instance_id, worker: str) -> DicomInstance | None:
    row = s.get(DicomInstance, instance_id, with_for_update=s.bind.dialect.name == "postgresql")
    return row if row is not None and row.state == "analysing" and row.worker == worker else None


@dataclass
class Analysed:
    """A film's finding and its result objects, to record (`finish`)."""

    claimed: Claimed
    result: dict[str, Any]
    results: list


@dataclass
class Refused:
    """A film the decoder or the input check refused, to record (`finish`)."""

    claimed: Claimed
    detail: str
    input_check: dict[str, Any]


def _record_analysed(s: Session, row: DicomInstance, done: Analysed, *, positive_class: str | None,
                     keep_image: bool):
    data = done.claimed.data
    study = repository.add_study(s, _source(row, data), done.result, positive_class=positive_class,
                                 image=data if keep_image else None, media_type="application/dicom")
    for built in done.results:
        s.add(DicomResult(instance_id=row.id, kind=built.kind, sop_instance_uid=built.sop_instance_uid,
                          sop_class_uid=built.sop_class_uid, study_instance_uid=row.study_instance_uid,
                          data=built.data, state="pending", attempts=0, next_attempt_at=utcnow()))
    row.state, row.study_id, row.data, row.finished_at, row.lease_until = "analysed", study.id, None, utcnow(), None
    return study.id


def _record_refused(s: Session, row: DicomInstance, done: Refused, *, model_sha256: str) -> None:
    repository.add_refusal(s, _source(row, done.claimed.data), detail=done.detail, input_check=done.input_check,
                           model_sha256=model_sha256)
    row.state, row.reason, row.data, row.finished_at, row.lease_until = "refused", done.detail, None, utcnow(), None


def finish(store: Store, worker: str, outcomes: list[Analysed | Refused], *, positive_class: str | None,
           keep_image: bool, model_sha256: str) -> list[uuid.UUID | bool | None]:
    """Record several films' outcomes in one transaction: each analysed one as a study with its result
    objects queued, each refused one in the refused list (its bytes dropped). For each, in order: the
    study id (analysed) or True (refused), or None when the lease was lost (another worker took the
    instance over): nothing is recorded twice."""
    out: list[uuid.UUID | bool | None] = []
    with store.session() as s:
        for done in outcomes:
            row = _owned(s, done.claimed.id, worker)
            if row is None:
                out.append(None)
            elif isinstance(done, Analysed):
                out.append(_record_analysed(s, row, done, positive_class=positive_class, keep_image=keep_image))
            else:
                _record_refused(s, row, done, model_sha256=model_sha256)
                out.append(True)
    return out


def finish_analysed(store: Store, claimed: Claimed, worker: str, result: dict[str, Any], results: list, *,
                    positive_class: str | None, keep_image: bool) -> uuid.UUID | None:
    """Record the analysis as a study and queue its result objects, in one transaction. None when the
    lease was lost (another worker took the instance over): nothing is recorded twice."""
    return finish(store, worker, [Analysed(claimed, result, results)], positive_class=positive_class,
                  keep_image=keep_image, model_sha256="")[0]


def finish_refused(store: Store, claimed: Claimed, worker: str, *, detail: str, input_check: dict[str, Any],
                   model_sha256: str) -> bool:
    """The decoder or the input check refused the film: a refused-list row, the bytes dropped."""
    return finish(store, worker, [Refused(claimed, detail, input_check)], positive_class=None, keep_image=False,
                  model_sha256=model_sha256)[0] is not None


@dataclass
class Outgoing:
    id: int
    kind: str
    sop_instance_uid: str
    data: bytes
    attempts: int


def claim_results(store: Store, worker: str, lease_s: float, limit: int = 16) -> list[Outgoing]:
    """Lease up to `limit` results due for delivery, oldest first (one association carries them)."""
    with store.session() as s:
        now = utcnow()
        query = (select(DicomResult)
                 .where(_lease_filter(DicomResult, now, ("pending", "sending")), DicomResult.next_attempt_at <= now)
                 .order_by(DicomResult.next_attempt_at, DicomResult.id).limit(limit))
        out = []
        for row in s.scalars(_locked(query, s)):
            row.state, row.worker, row.lease_until = "sending", worker, now + timedelta(seconds=lease_s)
            row.attempts += 1
            out.append(Outgoing(row.id, row.kind, row.sop_instance_uid, row.data, row.attempts))
        return out


def mark_sent(store: Store, *result_ids: int) -> None:
    """The destination stored these results (one transaction for a batch sent over one association)."""
    if not result_ids:
        return
    with store.session() as s:
        s.execute(update(DicomResult).where(DicomResult.id.in_(result_ids))
                  .values(state="sent", sent_at=utcnow(), lease_until=None, last_error=None))


def mark_failed(store: Store, result_id: int, error: str, *, retry_in_s: float | None) -> None:
    """Back to the queue, due again in `retry_in_s`; None: the destination refused it for good."""
    with store.session() as s:
        values: dict[str, Any] = {"last_error": error[:2000], "lease_until": None}
        if retry_in_s is None:
            values["state"] = "failed"
        else:
            values.update(state="pending", next_attempt_at=utcnow() + timedelta(seconds=retry_in_s))
        s.execute(update(DicomResult).where(DicomResult.id == result_id).values(**values))


def release_stale_leases(store: Store) -> int:
    """On SQLite one node process owns the file: leases left by a killed run are void at start-up."""
    if store.engine.dialect.name != "sqlite":
        return 0
    with store.session() as s:
        n = s.execute(update(DicomInstance).where(DicomInstance.state == "analysing")
                      .values(state="queued", lease_until=None)).rowcount
        n += s.execute(update(DicomResult).where(DicomResult.state == "sending")
                       .values(state="pending", lease_until=None)).rowcount
        return n


def counts(store: Store) -> dict[str, Any]:
    """Queue figures for /health and the logs: instances and results by state, the oldest waiting
    result and its last error."""
    with store.session() as s:
        instances = dict(s.execute(select(DicomInstance.state, func.count()).group_by(DicomInstance.state)).all())
        results = dict(s.execute(select(DicomResult.state, func.count()).group_by(DicomResult.state)).all())
        waiting = s.execute(select(DicomResult.created_at, DicomResult.last_error, DicomResult.attempts)
                            .where(DicomResult.state.in_(("pending", "sending")))
                            .order_by(DicomResult.created_at).limit(1)).first()
    out: dict[str, Any] = {"instances": instances, "results": results}
    if waiting is not None:
        out["oldest_waiting_result"] = {"since": waiting[0].isoformat(), "attempts": waiting[2],
                                        "last_error": waiting[1]}
    return out

