"""Class-folder datasets: scanning, validation, patient-grouped splits and a map-style dataset."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediflow.data.images import load_image
from mediflow.errors import DatasetError, ImageDecodeError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".dcm", ".dicom"}


@dataclass
class Samples:
    """A list of labelled image files, the unit every stage of the pipeline passes on."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> Samples:
        return Samples([self.paths[i] for i in idx], [self.labels[i] for i in idx], list(self.class_names))

    def counts(self) -> dict[str, int]:
        c = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(self.class_names))
        return {n: int(k) for n, k in zip(self.class_names, c)}

    def extend(self, other: Samples) -> Samples:
        """Append another dataset's samples, mapping its labels onto these class names by name."""
        missing = set(other.class_names) - set(self.class_names)
        if missing:
            raise DatasetError(f"extra data has classes {sorted(missing)} not in {self.class_names}")
        remap = [self.class_names.index(n) for n in other.class_names]
        return Samples(self.paths + other.paths, self.labels + [remap[y] for y in other.labels], self.class_names)

    def file_list_sha256(self) -> str:
        """A fingerprint of the file list (names and labels), stored in checkpoints."""
        h = hashlib.sha256()
        for p, y in sorted((p.name, y) for p, y in zip(self.paths, self.labels)):
            h.update(f"{p}\t{self.class_names[y]}\n".encode())
        return h.hexdigest()


def _is_candidate(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".")


def scan_class_folders(root: str | Path, *, min_classes: int = 2) -> Samples:
    """A folder with one sub-folder per class -> Samples. Class names are the sorted folder names."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class sub-folders (expected e.g. NORMAL/ and PNEUMONIA/)")
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if _is_candidate(p))
        if not files:
            continue
        names.append(d.name)
        paths += files
        labels += [len(names) - 1] * len(files)
    if not paths:
        raise DatasetError(f"{root}: no image files in {', '.join(d.name for d in class_dirs)}")
    if len(names) < min_classes:
        raise DatasetError(
            f"{root}: found only class {names} with images; training needs at least {min_classes} classes"
        )
    return Samples(paths, labels, names)


def resolve_split_dir(root: str | Path, split: str) -> Path:
    """`root/split` when it exists (Kaggle layout), else `root` itself (a bare class-folder dataset)."""
    root = Path(root)
    if (root / split).is_dir():
        return root / split
    return root


def check_images(samples: Samples, *, skip_bad: bool, workers: int = 4) -> Samples:
    """Fully decode every file once; raise naming the first bad file, or drop bad files and log a count."""

    def check(p: Path) -> str | None:
        try:
            load_image(p)
        except ImageDecodeError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(check, samples.paths))
    bad = [i for i, e in enumerate(problems) if e is not None]
    if bad and not skip_bad:
        raise DatasetError(f"bad image: {problems[bad[0]]} (use --skip-bad to skip bad files)")
    if bad:
        log.warning("skipped %d bad file(s) of %d", len(bad), len(samples))
        keep = [i for i, e in enumerate(problems) if e is None]
        samples = samples.subset(keep)
    return samples


_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^((?:[A-Za-z0-9]+-)?IM-\d+)-\d+", re.IGNORECASE)


def patient_id(filename: str) -> str:
    """The patient a Kermany file name belongs to; other names are their own group."""
    stem = Path(filename).name
    m = _PERSON.match(stem)
    if m:
        return m.group(1).lower()
    m = _IM.match(stem)
    if m:
        return m.group(1)
    return f"file:{stem}"


def _group_ids(samples: Samples) -> np.ndarray:
    """Patient groups, merged where files are byte-identical (the data has duplicate images filed
    under different names; splitting them apart would leak training images into validation)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    seen: dict[str, str] = {}
    pids = [patient_id(p.name) for p in samples.paths]
    for p, pid in zip(samples.paths, pids):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest in seen:
            parent[find(pid)] = find(seen[digest])
        else:
            seen[digest] = pid
    roots = [find(pid) for pid in pids]
    _, inverse = np.unique(roots, return_inverse=True)
    return inverse


def grouped_split(samples: Samples, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[Samples, Samples]:
    """Stratified-by-class, grouped-by-patient train/validation split; same seed -> same split."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / val_fraction))
    groups = _group_ids(samples)
    if len(np.unique(groups)) < n_splits:
        raise DatasetError(
            f"only {len(np.unique(groups))} patients: too few for a {val_fraction:.0%} grouped validation split"
        )
    # Sort by path first so the split depends on the files, not on directory listing order.
    order = np.argsort([str(p) for p in samples.paths], kind="stable")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    y = np.asarray(samples.labels)[order]
    train_idx, val_idx = next(sgkf.split(np.zeros(len(order)), y, groups[order]))
    return samples.subset(sorted(order[train_idx])), samples.subset(sorted(order[val_idx]))


class ImageFolderDataset:
    """Samples + a transform -> (tensor, label): a map-style dataset for torch's DataLoader, which
    needs only `__len__` and `__getitem__` (so this module imports no torch: `mediflow analyze`
    and the server read IMAGE_SUFFIXES and the samples from here)."""

    def __init__(self, samples: Samples, transform: Callable, *, draft_size: int | None = None):
        self.samples = samples
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img = load_image(self.samples.paths[i], draft_size=self.draft_size).image
        return self.transform(img), self.samples.labels[i]
