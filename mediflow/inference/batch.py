"""Decode the next batches of images in threads while the current one runs through the model.

PIL decodes and resizes with the GIL released and ONNX Runtime/torch compute without it, so a
thread pool overlaps decoding with inference without the copies of process workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from mediflow.errors import ImageDecodeError

T = TypeVar("T")
V = TypeVar("V")


def prefetched_batches(items: Sequence[T], load: Callable[[T], V], batch_size: int,
                       workers: int = 2, ahead: int = 2) -> Iterator[list[tuple[T, V | ImageDecodeError]]]:
    """Batches of (item, loaded value or the ImageDecodeError it raised), in order, with up to
    `ahead` batches being decoded while the caller works on the current one."""

    def result(f: Future) -> V | ImageDecodeError:
        try:
            return f.result()
        except ImageDecodeError as exc:
            return exc

    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append([(item, pool.submit(load, item)) for item in chunk])
            if len(pending) > ahead:
                yield [(item, result(f)) for item, f in pending.popleft()]
        while pending:
            yield [(item, result(f)) for item, f in pending.popleft()]
