"""Analyse every JPEG, PNG and DICOM file under a folder into a CSV, resumably.

Rows are appended and flushed batch by batch, so an interrupted run loses at most the batch in
flight, and a re-run skips every file the CSV already has (a row cut short by the interruption is
dropped first) except those with an error row, which it tries again (unless `retry_errors` is off).
Unreadable files get a row with `error` and do not stop the run. Files under the folder that are not
images are counted and named with the reason. A sidecar `<csv>.provenance.json` records the model
(SHA-256, version), its operating point and each run; a CSV written by another model is not resumed.
The next batches decode in threads while one runs through the model; optionally a heatmap overlay is
written per image.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from mediflow import __version__
from mediflow.data.dataset import IMAGE_SUFFIXES
from mediflow.data.decoded import FORMAT_NAMES
from mediflow.data.images import DEFAULT_MAX_PIXELS, decode_image, sniff_format
from mediflow.errors import DatasetError, ImageDecodeError, MediFlowError
from mediflow.inference.batch import prefetched_batches
from mediflow.inference.heatmap import blend
from mediflow.inference.input_check import Reason, rejected, summarize
from mediflow.inference.predictor import Predictor


@dataclass
class FolderSummary:
    found: int  # image files under the folder
    skipped: int  # already in the CSV from an earlier run
    analysed: int  # analysed now, successfully
    failed: int  # analysed now, with an error row
    ok_in_csv: int  # rows with an answer (a finding or a refusal) in the CSV after this run, earlier runs included
    refused: int = 0  # read now, but refused by the input check (no finding)
    retried: int = 0  # files with an error row from an earlier run, tried again now
    not_images: list[tuple[str, str]] = field(default_factory=list)  # (file, why it was skipped)
    provenance: Path | None = None  # the sidecar JSON


def csv_columns(class_names: list[str]) -> list[str]:
    """`input_check`: ok, warning or rejected (no finding: prediction columns empty); `input_check_reasons`:
    the check's reason codes, '; '-separated (docs/input_check.md)."""
    return ["file", "prediction", "confidence", *[f"p_{c}" for c in class_names], "needs_review", "input_check",
            "input_check_reasons", "notes", "error"]


def reason_codes(input_check: dict) -> str:
    return "; ".join(r["code"] for r in input_check["reasons"])


def _is_dicom_without_suffix(path: Path) -> bool:
    """Accept a file without an image suffix by its 'DICM' preamble."""
    if path.name.upper() == "DICOMDIR":  # a media directory index, not an image
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and sniff_format(head) == "dicom"


def find_images(root: Path, *, exclude: Path | None = None) -> list[Path]:
    """Image files under `root` (recursively, hidden files and folders skipped), sorted."""
    return scan_folder(root, exclude={exclude} if exclude is not None else set())[0]


def _not_an_image(path: Path, name: str) -> str | None:
    """Why the file `path` (called `name` in messages) is not analysed, or None when it is an image file."""
    if name.startswith("."):
        return "hidden file"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return None
    if path.name.upper() == "DICOMDIR":
        return "DICOMDIR: a DICOM media index, not an image"
    # DICOM names are often bare (IM000001) or UID-like (1.2.840.113619.2.55.3): sniff those.
    if not path.suffix or path.suffix[1:].isdigit():
        try:
            size = path.stat().st_size
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if size == 0:
            return "empty file (0 bytes) without an image extension"
        if _is_dicom_without_suffix(path):
            return None
        return "no image extension and no DICOM preamble"
    return f"not a {FORMAT_NAMES} file by its extension ({path.suffix})"


def scan_folder(root: Path, *, exclude: set[Path] = frozenset()) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files under `root`, sorted; [(file relative to root, why it was skipped)] for the rest).
    Hidden folders are not searched (each is listed once); `exclude`: files to pass over silently
    (the CSV being written and its sidecar)."""
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in sorted(d for d in dirnames if d.startswith(".")):
            skipped.append(((here / d).relative_to(root).as_posix() + "/", "hidden folder (not searched)"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = here / name
            if exclude and path.resolve() in exclude:
                continue
            why = _not_an_image(path, name)
            if why is None:
                found.append(path)
            else:
                skipped.append((path.relative_to(root).as_posix(), why))
    return sorted(found), sorted(skipped)


def skipped_lines(summary: FolderSummary, *, show: int = 10) -> list[str]:
    """What a command prints about the files it did not analyse: a count, then up to `show` of them
    with the reason (all of them are in the provenance file)."""
    if not summary.not_images:
        return []
    lines = [f"skipped {len(summary.not_images)} entr{'y' if len(summary.not_images) == 1 else 'ies'} that are "
             f"not images" + (f" (all listed in {summary.provenance})" if summary.provenance else "") + ":"]
    lines += [f"  {name}: {why}" for name, why in summary.not_images[:show]]
    if len(summary.not_images) > show:
        lines.append(f"  ... and {len(summary.not_images) - show} more")
    return lines


def provenance_path(out: Path) -> Path:
    """The sidecar JSON of a results CSV: `<csv>.provenance.json` beside it."""
    return out.with_name(out.name + ".provenance.json")


def model_provenance(predictor: Predictor) -> dict[str, Any]:
    """Which model, at which operating point, wrote a results CSV."""
    info = predictor.info
    return {
        "model": {**info.ref(),
                  "weights_sha256": info.weights_sha256, "path": info.path, "backend": predictor.backend_name},
        "operating_point": {**(predictor.rule.operating_point() or {}),
                            "threshold_rule": predictor.ckpt.get("threshold_rule"),
                            "temperature": predictor.temperature},
        "review_below_confidence": predictor.review_below,
        "input_check": predictor.input_check.describe(),
        "mediflow": __version__,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read_provenance(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise MediFlowError(f"{path}: not a readable provenance file; move it away to start a new record") from None
    return data if isinstance(data, dict) else None


def _drop_error_rows(out: Path, columns: list[str]) -> int:
    """Rewrite `out` (atomically) without its error rows, so the files they name are analysed again
    and each file keeps one row. Returns how many rows were dropped."""
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    error_col = columns.index("error")
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(columns) and not r[error_col]]
    dropped = len(rows) - len(kept)
    if dropped:
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(kept)
        tmp.replace(out)
    return dropped


def _drop_partial_last_row(out: Path) -> None:
    """A run killed while writing can leave the last row without its newline: cut it off."""
    with open(out, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_previous(out: Path, columns: list[str]) -> dict[str, bool]:
    """{file: analysed without error} for the rows an earlier run wrote to `out`."""
    if not out.exists() or out.stat().st_size == 0:
        return {}
    if not out.is_file():
        raise MediFlowError(f"{out}: exists and is not a file")
    _drop_partial_last_row(out)
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return {}
        if header != columns:
            raise MediFlowError(f"{out}: its columns ({', '.join(header[:8])}...) are not this model's; "
                                f"use another --out (the file is left as it is)")
        error_col = columns.index("error")
        return {row[0]: not row[error_col] for row in reader if len(row) == len(columns)}


@dataclass
class _Loaded:
    x: np.ndarray | None  # the model's input, or None when the file is unreadable
    notes: list[str]
    error: str | None
    image: Image.Image | None = None  # kept only for heatmap overlays
    reasons: list[Reason] | None = None  # the input check's reasons before the model
    header: dict | None = None  # DICOM header fields the input check reads


def _load(path: Path, name: str, predictor: Predictor, max_pixels: int, keep_image: bool) -> _Loaded:
    try:
        # JPEGs decode at reduced scale (DCT draft), as the server decodes uploads.
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"{name}: cannot read ({exc.strerror})") from None
        decoded = decode_image(data, name=str(path), max_pixels=max_pixels, draft_size=predictor.draft_size)
        reasons = predictor.check_before(decoded)
        # A refused input is not sent through the model.
        x = None if rejected(reasons) else predictor.preprocess_array(decoded.image)
        return _Loaded(x, decoded.notes, None, decoded.image if keep_image else None, reasons, decoded.dicom_header)
    except ImageDecodeError as exc:
        # load_image names the absolute path; the CSV names files relative to the folder.
        return _Loaded(None, [], str(exc).replace(str(path), name, 1))
    except Exception as exc:  # a library bug on one odd file must not stop a run over thousands
        return _Loaded(None, [], f"{name}: could not be analysed (unexpected {type(exc).__name__} in the decoder; "
                                 "please report it with the file)")


def overlay_name(name: str) -> str:
    """The heatmap file for an image's path relative to the folder: 'a/b.jpeg' -> 'a__b.png'."""
    return "__".join(Path(name).with_suffix("").parts) + ".png"


def check_folder(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return root


def analyze_folder(predictor: Predictor, root: str | Path, out: str | Path, *, batch_size: int = 16,
                   workers: int = 2, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                   heatmap_dir: str | Path | None = None, retry_errors: bool = True) -> FolderSummary:
    """`heatmap_dir`: also write each image with its heatmap overlaid there (see overlay_name).
    `retry_errors`: files with an error row from an earlier run are analysed again (their old rows
    dropped); off, they are skipped like the files already answered."""
    root, out = check_folder(root), Path(out)
    if batch_size < 1:
        raise MediFlowError("--batch-size must be at least 1")
    columns = csv_columns(predictor.class_names)
    sidecar = provenance_path(out)
    record = _read_provenance(sidecar)
    mine = model_provenance(predictor)
    if record is not None and out.exists() and record.get("model", {}).get("sha256") != mine["model"]["sha256"]:
        theirs = record.get("model", {})
        raise MediFlowError(f"{out} was written by another model (version {theirs.get('version')}, SHA-256 "
                            f"{str(theirs.get('sha256'))[:12]}...; see {sidecar.name}): use another --out")
    previous = read_previous(out, columns)
    retried = 0
    if retry_errors and previous and not all(previous.values()):
        retried = _drop_error_rows(out, columns)
        previous = {name: ok for name, ok in previous.items() if ok}
    paths, not_images = scan_folder(root, exclude={out.resolve(), sidecar.resolve()})
    if not paths:
        raise DatasetError(f"{root}: no {FORMAT_NAMES} files found" +
                           (f" ({len(not_images)} other entries skipped, e.g. {not_images[0][0]}: {not_images[0][1]})"
                            if not_images else ""))
    names = [p.relative_to(root).as_posix() for p in paths]
    todo = [(p, n) for p, n in zip(paths, names) if n not in previous]
    summary = FolderSummary(found=len(paths), skipped=len(paths) - len(todo), analysed=0, failed=0,
                            ok_in_csv=sum(previous.values()), retried=retried, not_images=not_images,
                            provenance=sidecar)
    run = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "folder": str(root),
           "image_files": len(paths), "already_in_csv": summary.skipped, "error_rows_retried": retried,
           "not_images": [{"file": n, "reason": why} for n, why in not_images]}
    record = {**(record or {}), **mine, "csv": out.name}
    record["runs"] = [*(record.get("runs") or []), run]
    heat = Path(heatmap_dir) if heatmap_dir is not None else None
    if heat is not None:
        heat.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_json(sidecar, record)
        f = open(out, "a", newline="", encoding="utf-8")
    except OSError as exc:
        raise MediFlowError(f"{out}: cannot write ({exc.strerror})") from None

    def load(item: tuple[Path, str]) -> _Loaded:
        return _load(item[0], item[1], predictor, max_pixels, keep_image=heat is not None)

    with f, tqdm(total=len(paths), initial=summary.skipped, desc="analyze", unit="file", disable=not progress,
                 mininterval=0.1 if sys.stderr.isatty() else 30) as bar:
        writer = csv.writer(f, lineterminator="\n")
        if f.tell() == 0:
            writer.writerow(columns)
        for batch in prefetched_batches(todo, load, batch_size, workers):
            loaded = [item for _, item in batch]
            good = [i for i, item in enumerate(loaded) if item.x is not None]
            results: dict[int, tuple[dict, np.ndarray | None]] = {}
            if good:
                probs, maps, pooled = predictor.forward(np.stack([loaded[i].x for i in good]),
                                                        heatmap=heat is not None)
                for j, i in enumerate(good):
                    check = predictor.check_after(loaded[i].reasons or [], pooled[j], loaded[i].header)
                    results[i] = ((predictor.response(probs[j], 0.0, check) if check["status"] != "rejected"
                                   else {"input_check": check}), None if maps is None else maps[j])
            empty = ["", "", *[""] * len(predictor.class_names), ""]
            for i, ((_, name), item) in enumerate(batch):
                if item.error is not None:
                    writer.writerow([name, *empty, "", "", "", item.error])
                    summary.failed += 1
                    continue
                r, hmap = results.get(i) or ({"input_check": summarize(item.reasons or [])}, None)
                check = r["input_check"]
                if check["status"] == "rejected":  # no finding for a refused input
                    writer.writerow([name, *empty, "rejected", reason_codes(check), "; ".join(item.notes), ""])
                    summary.refused += 1
                    continue
                if hmap is not None:
                    blend(item.image, hmap).save(heat / overlay_name(name))
                writer.writerow([name, r["prediction"], r["confidence"],
                                 *[r["probabilities"][c] for c in predictor.class_names],
                                 r["needs_review"], check["status"], reason_codes(check), "; ".join(item.notes), ""])
                summary.analysed += 1
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    summary.ok_in_csv += summary.analysed + summary.refused
    run.update(finished=datetime.now(UTC).isoformat(timespec="seconds"), analysed=summary.analysed,
               refused=summary.refused, failed=summary.failed)
    _write_json(sidecar, record)
    return summary
