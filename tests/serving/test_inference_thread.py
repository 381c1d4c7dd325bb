"""The server's inference thread (serving/inference_thread.py): one job at a time, on one thread,
in order; errors reach the caller; a cancelled job that has not started never runs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import jpeg_bytes, xray_like
from fastapi.testclient import TestClient

from mediflow.inference.predictor import Predictor
from mediflow.serving.app import create_app
from mediflow.serving.inference_thread import InferenceThread
from mediflow.serving.settings import Settings


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    return Predictor.load(tiny_model)


def test_jobs_run_one_at_a_time_on_one_thread_in_order():
    runner = InferenceThread()
    active, most, threads, order = [0], [0], set(), []
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        threads.add(threading.get_ident())
        time.sleep(0.01)
        order.append(i)
        with lock:
            active[0] -= 1
        return i * i

    async def main():
        return await asyncio.gather(*(runner.run(job, i) for i in range(6)))

    try:
        assert asyncio.run(main()) == [i * i for i in range(6)]
    finally:
        runner.close()
    assert most[0] == 1
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert order == list(range(6))


def test_an_exception_reaches_the_caller_and_the_thread_goes_on():
    runner = InferenceThread()

    def fail():
        raise ValueError("bad film")

    async def main():
        with pytest.raises(ValueError, match="bad film"):
            await runner.run(fail)
        return await runner.run(lambda x, y=0: x + y, 2, y=3)

    try:
        assert asyncio.run(main()) == 5
    finally:
        runner.close()


def test_a_cancelled_job_that_has_not_started_never_runs():
    runner = InferenceThread()
    started = threading.Event()
    release = threading.Event()
    ran = []

    def blocker():
        started.set()
        release.wait(5)

    async def main():
        first = asyncio.ensure_future(runner.run(blocker))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        second = asyncio.ensure_future(runner.run(ran.append, "second"))
        await asyncio.sleep(0.01)
        second.cancel()
        await asyncio.sleep(0.01)  # the cancellation reaches the queued job in a loop callback
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        await runner.run(ran.append, "third")

    try:
        asyncio.run(main())
    finally:
        runner.close()
    assert ran == ["third"]


def test_the_server_runs_every_analysis_on_its_one_inference_thread(predictor, monkeypatch):
    seen = []
    real = type(predictor).predict_upload

    def spy(self, *args, **kwargs):
        seen.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(predictor), "predict_upload", spy)
    app = create_app(Settings(), predictor=predictor)
    with TestClient(app) as client:
        for seed in range(3):
            r = client.post("/api/vision/analyze",
                            files={"file": ("x.jpeg", jpeg_bytes(xray_like(seed % 2, seed, 64)))})
            assert r.status_code == 200, r.text
    assert len(seen) == 3 and len(set(seen)) == 1 and seen[0].startswith("mediflow-inference")
    # Shut down with the app, and started again by a second start of the same app.
    with TestClient(app) as client:
        r = client.post("/api/vision/analyze", files={"file": ("x.jpeg", jpeg_bytes(xray_like(0, 1, 64)))})
        assert r.status_code == 200, r.text
    assert len(seen) == 4
