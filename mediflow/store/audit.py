"""Reading the audit log: filtered by time, actor and study, newest first, paged; rows as the API and
`mediflow audit` print them (study ids with dashes, times in UTC with their zone)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mediflow.errors import MediFlowError
from mediflow.store.models import AuditEntry


@dataclass(frozen=True)
class AuditFilter:
    """`since` (inclusive) and `until` (exclusive): aware datetimes; `actor`: exact key name;
    `study_id`: one study."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    study_id: uuid.UUID | None = None


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time; one without a zone is read as UTC (the log's zone). Raises MediFlowError."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise MediFlowError(f"{what} {text!r}: not an ISO 8601 time "
                            f"(e.g. 2026-12-07T09:00:00Z or 2026-12-07)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_study_id(text: str) -> uuid.UUID:
    """A study id, with or without dashes. Raises MediFlowError."""
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise MediFlowError(f"study {text!r}: not a study id (a UUID such as "
                            "123e4567-e89b-12d3-a456-426614174000)") from None


def list_audit(session: Session, where: AuditFilter, *, limit: int = 100, offset: int = 0
               ) -> tuple[int, list[AuditEntry]]:
    """(matching rows in all, one page of them newest first)."""
    query = select(AuditEntry)
    if where.since is not None:
        query = query.where(AuditEntry.at >= where.since)
    if where.until is not None:
        query = query.where(AuditEntry.at < where.until)
    if where.actor is not None:
        query = query.where(AuditEntry.actor == where.actor)
    if where.study_id is not None:
        query = query.where(AuditEntry.study_id == where.study_id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit).offset(offset))
    return int(total or 0), list(rows)


def audit_row(entry: AuditEntry) -> dict[str, Any]:
    """One entry as the API returns it."""
    return {"id": entry.id, "at": entry.at.astimezone(UTC).isoformat(), "actor": entry.actor,
            "method": entry.method, "route": entry.route, "status_code": entry.status_code,
            "study_id": str(entry.study_id) if entry.study_id is not None else None}


def audit_page(session: Session, where: AuditFilter, *, limit: int, offset: int) -> dict[str, Any]:
    """`{total, limit, offset, items}`: the body of `GET /api/audit` and what `mediflow audit --json` prints."""
    total, rows = list_audit(session, where, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": [audit_row(e) for e in rows]}
