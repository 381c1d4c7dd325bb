"""The server's one inference thread: decoding and the model run there, one upload at a time.

The model already uses every core for one image, so running two at once only makes both slower;
queuing keeps latency predictable. The work leaves the event loop so that it keeps answering
`/health`, reading other uploads and refusing excess ones while an image is analysed.

Why one dedicated thread rather than `asyncio.to_thread` behind a lock: the model is then always
called from the same thread (asyncio's default pool hands each call to whichever of its idle threads
takes it first), and it was measurably faster. Through the HTTP API on a 2-core AVX-512 VM
(benchmarks/serving_benchmark.py's servers, 500 uploads each, interleaved), that took 0.8 ms off the
p50 of an analysis (15.8 -> 14.9 ms; 14.7 ms with no thread at all, which would block the loop).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class InferenceThread:
    """Runs callables on one dedicated worker thread, in the order they are submitted.

    A job whose awaiting task is cancelled before the job starts never runs; one already running
    finishes and its result is discarded."""

    def __init__(self, name: str = "mediflow-inference"):
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the inference thread (started by the first call, or the first
        after `close`); its result, or the exception it raised."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the thread once the running job (if any) ends; jobs still queued are cancelled."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
