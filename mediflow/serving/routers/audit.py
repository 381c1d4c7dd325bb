"""`GET /api/audit`: the audit log (who called which route, when, with what outcome), filtered by time,
actor and study, newest first, paged. Needs a valid API key: with keys off there is no one to name."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Security

from mediflow.errors import MediFlowError
from mediflow.serving.auth import ApiKeys
from mediflow.serving.dependencies import authenticated, get_api_keys, get_optional_store, model_loaded
from mediflow.serving.schemas import AuditPage, ErrorResponse
from mediflow.store.audit import AuditFilter, audit_page, parse_study_id, parse_time
from mediflow.store.db import Store

router = APIRouter(prefix="/api", tags=["audit"], dependencies=[Security(authenticated), Depends(model_loaded)])


@router.get("/audit", response_model=AuditPage, summary="the audit log",
            responses={400: {"model": ErrorResponse, "description": "a filter that is not a time or a study id"},
                       403: {"model": ErrorResponse, "description": "API keys are not configured"},
                       503: {"model": ErrorResponse, "description": "the server keeps no store"}})
def read_audit(since: str | None = Query(None, description="from this time (ISO 8601; no zone: UTC), inclusive"),
               until: str | None = Query(None, description="before this time (ISO 8601; no zone: UTC)"),
               actor: str | None = Query(None, max_length=100, description="one API key's name"),
               study: str | None = Query(None, max_length=64, description="one study id (with or without dashes)"),
               limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
               keys: ApiKeys | None = Depends(get_api_keys),
               store: Store | None = Depends(get_optional_store)) -> AuditPage:
    """Newest first. A missing or wrong key has already been refused (401) by `authenticated`."""
    if keys is None:
        raise HTTPException(403, detail="the audit log is served only when API keys are configured (every caller "
                                        "is anonymous without them); read it with `mediflow audit` on the server")
    if store is None:
        raise HTTPException(503, detail="this server keeps no store, so no audit log: start it with a database")
    try:
        where = AuditFilter(since=parse_time(since, "since") if since else None,
                            until=parse_time(until, "until") if until else None,
                            actor=actor, study_id=parse_study_id(study) if study else None)
    except MediFlowError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    with store.session() as s:
        return AuditPage.model_validate(audit_page(s, where, limit=limit, offset=offset))
