"""Wiring: the SCP, the analysis loop, the delivery loop and a small /health endpoint."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mediflow import __version__
from mediflow.dicom_node import queue, scp
from mediflow.dicom_node.worker import Analyser, Deliverer, loop, worker_id
from mediflow.store.db import Store

log = logging.getLogger("mediflow.dicom_node")


@dataclass
class NodeConfig:
    ae_title: str = "MEDIFLOW"
    host: str = "0.0.0.0"
    port: int | None = 11112  # None: no SCP (a worker-only process sharing a PostgreSQL queue)
    allowed_aes: list[str] | None = None
    heatmap_sc: bool = False
    keep_images: bool = False
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    analysis_workers: int = 2
    batch: int = 8  # films an analysis thread claims at once when that many wait
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    ssl_context: object | None = None


def health(store: Store, destination: str) -> dict:
    """The node's state: 'ok', or 'degraded' while a result waits after a failed delivery."""
    figures = queue.counts(store)
    waiting = figures.get("oldest_waiting_result")
    status = "degraded" if waiting and waiting.get("last_error") else "ok"
    return {"status": status, "version": __version__, "destination": destination, **figures}


class Node:
    """One node process: its SCP, analysis threads, delivery thread and /health server."""

    def __init__(self, store: Store, predictor, sender, config: NodeConfig):
        self.store, self.predictor, self.sender, self.config = store, predictor, sender, config
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.server = None
        self.http = None

    def start(self) -> None:
        """Listen (unless worker-only), then start the analysis and delivery loops and /health."""
        if (n := queue.release_stale_leases(self.store)):
            log.info("%d job(s) left unfinished by a previous run queued again", n)
        c = self.config
        if c.port is not None:  # first: a port in use ends the start before any job is claimed
            reception = scp.Reception(self.store, model_sha256=self.predictor.info.sha256, on_queued=self.wake.set)
            self.server = scp.start(reception, ae_title=c.ae_title, host=c.host, port=c.port,
                                    allowed_aes=c.allowed_aes, ssl_context=c.ssl_context)
        for i in range(c.analysis_workers):
            analyser = Analyser(self.store, self.predictor, worker=worker_id(), heatmap_sc=c.heatmap_sc,
                                keep_images=c.keep_images, batch=c.batch)
            self._thread(f"analyse-{i}", lambda a=analyser: loop(a.run_once, self.stop_event, self.wake))
        if self.sender is not None:
            deliverer = Deliverer(self.store, self.sender, worker=worker_id(), backoff_s=c.backoff_s,
                                  max_backoff_s=c.max_backoff_s)
            self._thread("deliver", lambda: loop(deliverer.run_once, self.stop_event, None, idle_s=0.5))
        if c.health_port is not None:
            self.http = _health_server(self.store, str(getattr(self.sender, "destination", "none")),
                                       c.health_host, c.health_port)
            threading.Thread(target=self.http.serve_forever, name="health", daemon=True).start()
            log.info("node health on http://%s:%d/health", c.health_host, c.health_port)

    def _thread(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        """Stop receiving, let the loops finish their current item, then return."""
        if self.server is not None:
            self.server.shutdown()
        if self.http is not None:
            self.http.shutdown()
        self.stop_event.set()
        self.wake.set()
        for t in self.threads:
            t.join(timeout=60)


def _health_server(store: Store, destination: str, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/health":
                self.send_error(404, "only /health")
                return
            try:
                body, code = health(store, destination), 200
            except Exception as exc:  # the store being down is exactly what /health must report
                body, code = {"status": "unavailable", "detail": f"study store unavailable ({type(exc).__name__})"}, 503
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # no access log
            pass

    return ThreadingHTTPServer((host, port), Handler)
