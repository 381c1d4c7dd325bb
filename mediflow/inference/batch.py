"""Many image files -> predictions, decoding the next batch in threads while the current one runs.

PIL decodes and resizes with the GIL released and ONNX Runtime/torch compute without it, so a
thread pool overlaps decoding with inference without the copies of process workers.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image

from mediflow.data.dataset import IMAGE_SUFFIXES
from mediflow.errors import ImageDecodeError

T = TypeVar("T")


@dataclass
class FileResult:
    path: Path
    probs: np.ndarray | None = None  # (K,) calibrated probabilities
    heatmap: np.ndarray | None = None  # (h, w) in [0, 1], when asked for
    image: Image.Image | None = None  # the decoded image, kept only when heatmaps are asked for
    error: str | None = None


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively, by suffix), sorted; hidden files skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def prefetched_batches(items: Sequence[Path], load: Callable[[Path], T], batch_size: int,
                       workers: int = 2, ahead: int = 2) -> Iterator[list[tuple[Path, T | ImageDecodeError]]]:
    """Batches of (path, loaded value or the ImageDecodeError it raised), in order, with up to
    `ahead` batches being decoded while the caller works on the current one."""

    def result(f: Future) -> T | ImageDecodeError:
        try:
            return f.result()
        except ImageDecodeError as exc:
            return exc

    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append([(p, pool.submit(load, p)) for p in chunk])
            if len(pending) > ahead:
                yield [(p, result(f)) for p, f in pending.popleft()]
        while pending:
            yield [(p, result(f)) for p, f in pending.popleft()]


def predict_files(predictor, paths: Sequence[Path], *, batch_size: int = 64, workers: int = 2,
                  heatmap: bool = False, progress: bool = False) -> Iterator[FileResult]:
    """One FileResult per path, in order; unreadable files carry `error` instead of `probs`."""
    from tqdm import tqdm

    def load(path: Path) -> tuple[np.ndarray, Image.Image | None]:
        img = predictor.load_image(path)
        return predictor.preprocess_array(img), img if heatmap else None

    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    try:
        for batch in prefetched_batches(paths, load, batch_size, workers):
            good = [(p, x) for p, x in batch if not isinstance(x, ImageDecodeError)]
            results: dict[Path, FileResult] = {p: FileResult(p, error=str(x)) for p, x in batch
                                               if isinstance(x, ImageDecodeError)}
            if good:
                x = np.stack([arr for _, (arr, _) in good])
                if heatmap:
                    probs, maps = predictor.heatmaps_from_tensors(x)
                else:
                    probs, maps = predictor.probabilities_from_tensors(x), [None] * len(good)
                for (p, (_, img)), pr, m in zip(good, probs, maps):
                    results[p] = FileResult(p, probs=pr, heatmap=m, image=img)
            for p, _ in batch:
                yield results[p]
            bar.update(len(batch))
    finally:
        bar.close()
