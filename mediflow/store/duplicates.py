"""Studies of the same image: uploads with identical bytes (by SHA-256) are linked to the first study
of those bytes, found by query on the hash every study already stores (no extra column)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mediflow.store.models import Study


@dataclass(frozen=True)
class SameImage:
    """`first`: the earliest study of these bytes (received first; ties by id); `uploads`: how many
    studies hold them, this one included."""

    first: uuid.UUID
    first_received_at: datetime
    uploads: int

    def duplicate_of(self, study_id: uuid.UUID) -> uuid.UUID | None:
        """The study this one repeats, or None when it is the first upload of its bytes."""
        return None if self.first == study_id else self.first


def same_images(session: Session, studies: Iterable[Study]) -> dict[uuid.UUID, SameImage]:
    """{study id: SameImage} for each of `studies` (one query for all of them, by the indexed hash)."""
    studies = list(studies)
    hashes = {s.image_sha256 for s in studies}
    if not hashes:
        return {}
    rows = session.execute(select(Study.id, Study.image_sha256, Study.received_at)
                           .where(Study.image_sha256.in_(hashes)).order_by(Study.received_at, Study.id)).all()
    first: dict[str, tuple[uuid.UUID, datetime]] = {}
    for sid, sha, at in rows:
        first.setdefault(sha, (sid, at))
    uploads = Counter(sha for _, sha, _ in rows)
    return {s.id: SameImage(first[s.image_sha256][0], first[s.image_sha256][1], uploads[s.image_sha256])
            for s in studies if s.image_sha256 in first}


def link_fields(study: Study, same: SameImage | None) -> dict[str, object]:
    """The API's fields: `duplicate_of` (the first study of the same bytes, null for the first itself)
    and `same_image_uploads` (studies of these bytes, this one included)."""
    if same is None:
        return {"duplicate_of": None, "same_image_uploads": 1}
    return {"duplicate_of": same.duplicate_of(study.id), "same_image_uploads": same.uploads}
