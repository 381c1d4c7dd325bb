"""`GET /api/audit`: the audit log (who called which route, when, with what outcome), filtered by time,
actor and study, newest first, paged. Needs a valid API key: with keys off there is no one to name."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from mediflow.errors import MediFlowError
from mediflow.store.audit import AuditFilter, audit_page, parse_study_id, parse_time

router = APIRouter(prefix="/api", tags=["audit"])


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


@router.get("/audit", response_model=AuditPage, summary="the audit log",
            responses={400: {"description": "a filter that is not a time or a study id"},
                       403: {"description": "API keys are not configured"},
                       503: {"description": "the server keeps no store"}})
def read_audit(request: Request,
               since: str | None = Query(None, description="from this time (ISO 8601; no zone: UTC), inclusive"),
               until: str | None = Query(None, description="before this time (ISO 8601; no zone: UTC)"),
               actor: str | None = Query(None, max_length=100, description="one API key's name"),
               study: str | None = Query(None, max_length=64, description="one study id (with or without dashes)"),
               limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """Newest first. The access middleware has already refused a missing or wrong key (401)."""
    if request.app.state.api_keys is None:
        raise HTTPException(403, detail="the audit log is served only when API keys are configured (every caller "
                                        "is anonymous without them); read it with `mediflow audit` on the server")
    store = request.app.state.store
    if store is None:
        raise HTTPException(503, detail="this server keeps no store, so no audit log: start it with a database")
    try:
        where = AuditFilter(since=parse_time(since, "since") if since else None,
                            until=parse_time(until, "until") if until else None,
                            actor=actor, study_id=parse_study_id(study) if study else None)
    except MediFlowError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    with store.session() as s:
        return audit_page(s, where, limit=limit, offset=offset)
