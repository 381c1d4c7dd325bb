"""The study store on SQLite and (when configured) PostgreSQL: migrations, worklist orderings, reviews."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from db_fixtures import add_fake_study, database_url, fake_result, store  # noqa: F401  (fixtures)
from sqlalchemy import select

from mediflow.errors import MediFlowError
from mediflow.store import repository
from mediflow.store.db import Store, current_revision, head_revision, upgrade
from mediflow.store.models import AuditEntry, Base, Review, StudyImage
from mediflow.store.triage import triage_scores


def add(store: Store, p: float, *, image: bytes | None = None):
    return add_fake_study(store, p, image=image)


def test_migrations_apply_on_an_empty_database(database_url):
    s = Store(database_url)
    try:
        assert current_revision(s.engine) is None
        with pytest.raises(MediFlowError, match="mediflow db upgrade"):
            s.require_current()
        upgrade(s.engine)
        assert current_revision(s.engine) == head_revision()
        assert {"studies", "reviews", "study_images", "audit_log", "alembic_version"} <= set(s.table_names())
        upgrade(s.engine)  # a second start is a no-op
        s.require_current()
        # The migration builds exactly the schema the ORM models describe.
        with s.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        s.dispose()


def test_worklist_orders_by_suspicion_and_by_uncertainty(store):
    ps = [0.10, 0.95, 0.45, 0.75, 0.38, 0.02]
    ids = {p: add(store, p) for p in ps}
    with store.session() as s:
        total, rows = repository.list_studies(s, sort="priority")
        assert total == len(ps)
        assert [st.priority for st, _ in rows] == pytest.approx(sorted(ps, reverse=True))
        # Threshold 0.4: 0.38 and 0.45 are the closest calls, 0.95 the clearest.
        _, rows = repository.list_studies(s, sort="uncertainty")
        assert [st.id for st, _ in rows] == [ids[p] for p in (0.38, 0.45, 0.10, 0.75, 0.02, 0.95)]
        _, rows = repository.list_studies(s, sort="received")
        assert [st.id for st, _ in rows] == [ids[p] for p in reversed(ps)]
        total, page = repository.list_studies(s, sort="priority", limit=2, offset=2)
        assert total == len(ps) and [st.id for st, _ in page] == [ids[0.45], ids[0.38]]


def test_review_flow_keeps_every_review_and_the_latest_is_current(store):
    sid = add(store, 0.9)
    before = datetime.now(UTC)
    with store.session() as s:
        first = repository.add_review(s, sid, label="PNEUMONIA", note="RLL consolidation", reviewer="dr_a")
        assert first.state == "confirmed"
    with store.session() as s:
        second = repository.add_review(s, sid, label="NORMAL", note=None, reviewer="dr_b")
        assert second.state == "corrected"
    with store.session() as s:
        study = repository.get_study(s, sid)
        assert (study.review_state, study.review_label, study.reviewer) == ("corrected", "NORMAL", "dr_b")
        assert before <= study.reviewed_at <= datetime.now(UTC) + timedelta(seconds=1)
        assert study.current_review_id == second.id
        assert [(r.reviewer, r.label) for r in repository.reviews_of(s, sid)] == [("dr_a", "PNEUMONIA"),
                                                                                 ("dr_b", "NORMAL")]
        assert repository.add_review(s, uuid.uuid4(), label="NORMAL", note=None,
                                     reviewer="x") is None
        _, unreviewed = repository.list_studies(s, status="unreviewed")
        _, corrected = repository.list_studies(s, status="corrected")
        assert unreviewed == [] and [st.id for st, _ in corrected] == [sid]


def test_concurrent_reviews_of_one_study_are_all_kept(store):
    sid = add(store, 0.6)
    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def review(i: int) -> None:
        try:
            barrier.wait()
            with store.session() as s:
                repository.add_review(s, sid, label="NORMAL" if i % 2 else "PNEUMONIA", note=f"read {i}",
                                      reviewer=f"dr_{i}")
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=review, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.session() as s:
        reviews = repository.reviews_of(s, sid)
        study = repository.get_study(s, sid)
        assert sorted(r.reviewer for r in reviews) == sorted(f"dr_{i}" for i in range(n))
        latest = max(reviews, key=lambda r: (r.reviewed_at, r.id))
        assert study.current_review_id == latest.id and study.reviewer == latest.reviewer
        assert study.review_note == latest.note


def test_no_pixel_data_unless_given(store):
    plain = add(store, 0.3)
    kept = add(store, 0.8, image=b"\xff\xd8\xffjpeg bytes")
    with store.session() as s:
        assert repository.get_image(s, plain) is None
        assert repository.get_image(s, kept).data == b"\xff\xd8\xffjpeg bytes"
        assert s.scalars(select(StudyImage.study_id)).all() == [kept]


def test_audit_rows(store):
    sid = add(store, 0.5)
    with store.session() as s:
        repository.add_audit(s, actor="dr_a", method="GET", route="/api/studies/{study_id}", status_code=200,
                             study_id=sid)
        repository.add_audit(s, actor="(no key)", method="GET", route="/api/studies", status_code=401)
    with store.session() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(r.actor, r.status_code, r.study_id) for r in rows] == [("dr_a", 200, sid), ("(no key)", 401, None)]
        assert [r.id for r in repository.audit_entries(s, study_id=sid)] == [rows[0].id]
        assert rows[0].at.tzinfo is not None


def test_deleting_a_study_keeps_its_audit_trail(store):
    sid = add(store, 0.5, image=b"x")
    with store.session() as s:
        repository.add_review(s, sid, label="NORMAL", note=None, reviewer="dr")
        repository.add_audit(s, actor="dr", method="POST", route="/api/studies/{study_id}/review",
                             status_code=200, study_id=sid)
    with store.session() as s:
        s.delete(repository.get_study(s, sid))
    with store.session() as s:
        assert s.scalars(select(Review)).all() == [] and s.scalars(select(StudyImage)).all() == []
        assert len(repository.audit_entries(s, study_id=sid)) == 1


def test_triage_scores():
    assert triage_scores(fake_result(0.9, threshold=0.4), "PNEUMONIA") == pytest.approx((0.9, 0.5))
    assert triage_scores(fake_result(0.45, threshold=None), "PNEUMONIA") == pytest.approx((0.45, 0.05))
    # Without a positive class the least confident studies come first either way.
    r = {"probabilities": {"A": 0.6, "B": 0.4}, "confidence": 0.6}
    assert triage_scores(r, None) == pytest.approx((0.4, 0.6))


def test_bad_database_urls_are_one_line_errors(tmp_path):
    with pytest.raises(MediFlowError, match="not a URL"):
        Store.open("not a url")
    with pytest.raises(MediFlowError, match="no database file"):
        Store.open(f"sqlite:///{tmp_path / 'absent.db'}", migrate=False)
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(MediFlowError, match="cannot open the database"):
        Store.open("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")



def test_a_postgres_url_without_its_driver_names_the_extra(monkeypatch):
    # The core install has no psycopg: importing it fails as it would there.
    import sys

    from mediflow.store.db import StoreError

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError) as err:
        Store("postgresql+psycopg://mediflow:mediflow@127.0.0.1:1/postgres")
    message = str(err.value)
    assert "[postgres]" in message and "\n" not in message
