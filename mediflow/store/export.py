"""Reviewed studies -> a class-folder dataset (DIR/<label>/<study_id>.<ext>) plus manifest.csv,
ready for `mediflow train --extra-data DIR`."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from mediflow.errors import MediFlowError
from mediflow.store import repository
from mediflow.store.db import Store

EXTENSIONS = {"jpeg": ".jpeg", "png": ".png", "webp": ".webp", "tiff": ".tiff", "dicom": ".dcm"}
MANIFEST_FIELDS = ["study_id", "label", "model_prediction", "probability", "reviewer", "reviewed_at"]


@dataclass
class ExportSummary:
    written: dict[str, int]
    without_image: int
    manifest: Path


def _safe_label(label: str) -> str:
    # Labels are validated class names on the way in; a folder name must still never escape DIR.
    if not label or label in (".", "..") or any(c in label for c in "/\\\0"):
        raise MediFlowError(f"review label {label!r} cannot be a folder name")
    return label


def export_feedback(store: Store, out_dir: str | Path) -> ExportSummary:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MediFlowError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    rows: list[dict[str, str]] = []
    with store.session() as s:
        studies, without_image = repository.reviewed_studies(s)
        for study in studies:
            image = repository.get_image(s, study.id)
            label = _safe_label(study.review_label)
            path = out / label / f"{study.id}{EXTENSIONS.get(study.source_format, '.bin')}"
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(image.data)
            os.replace(tmp, path)
            s.expunge(image)  # one image in memory at a time
            written[label] = written.get(label, 0) + 1
            rows.append({"study_id": str(study.id), "label": label, "model_prediction": study.prediction,
                         "probability": f"{study.priority:.4f}", "reviewer": study.reviewer or "",
                         "reviewed_at": study.reviewed_at.isoformat() if study.reviewed_at else ""})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return ExportSummary(written=written, without_image=without_image, manifest=manifest)
