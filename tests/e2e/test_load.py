"""A bounded load test against the real server: 200 analyses, 8 in flight at a time, 0 errors.
It reports latency percentiles; it does not assert timings (those belong to benchmarks)."""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from conftest import jpeg_bytes, xray_like

REQUESTS = 200
CONCURRENCY = 8


def test_200_requests_8_concurrent_without_errors(live_server, capsys):
    images = [jpeg_bytes(xray_like(i % 2, i, 224)) for i in range(8)]  # the training data's size
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    with httpx.Client(base_url=live_server.url, timeout=120, limits=limits) as client:
        def one(i: int) -> tuple[int, float, float | None]:
            t0 = time.perf_counter()
            r = client.post("/api/vision/analyze", files={"file": (f"{i}.jpeg", images[i % len(images)], "image/jpeg")})
            elapsed = (time.perf_counter() - t0) * 1000
            ok = r.status_code == 200 and r.json().get("prediction") in ("NORMAL", "PNEUMONIA")
            return (200 if ok else r.status_code), elapsed, r.json().get("inference_ms") if ok else None

        start = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, range(REQUESTS)))
        wall = time.perf_counter() - start
        health = client.get("/health")

    errors = [status for status, _, _ in results if status != 200]
    assert len(results) == REQUESTS and errors == [], f"{len(errors)} errors: {errors[:10]}"
    assert health.status_code == 200

    latency = np.array([ms for _, ms, _ in results])
    server_ms = np.array([ms for _, _, ms in results])
    with capsys.disabled():
        print(f"\nload test: {REQUESTS} requests, {CONCURRENCY} concurrent, tiny model, 224x224 JPEG, "
              f"{os.cpu_count()} CPUs ({platform.machine()})")
        print("  metric                      p50      p95      max")
        print(f"  end-to-end latency (ms) {np.percentile(latency, 50):8.1f} {np.percentile(latency, 95):8.1f} "
              f"{latency.max():8.1f}")
        print(f"  server inference (ms)   {np.percentile(server_ms, 50):8.1f} {np.percentile(server_ms, 95):8.1f} "
              f"{server_ms.max():8.1f}")
        print(f"  throughput: {REQUESTS / wall:.1f} requests/s, errors: {len(errors)}")
