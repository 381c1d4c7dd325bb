"""The node's two loops: analysing queued films, and delivering their results.

Analysis runs the API's own path (decode_image, then Predictor.predict_with_map), so the SR's
finding and probability equal `POST /api/vision/analyze` on the same bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from mediflow.data.images import decode_image
from mediflow.dicom_node import queue, results
from mediflow.dicom_node.sender import SendError
from mediflow.errors import ImageDecodeError
from mediflow.inference.input_check import InputRejected
from mediflow.inference.predictor import Predictor
from mediflow.store.db import Store

log = logging.getLogger("mediflow.dicom_node")

DEFAULT_MAX_PIXELS = 50_000_000  # as the API's default (serving/settings.py)


def worker_id() -> str:
    """Names the process in leases: host, pid and a random part (a restarted process is another worker)."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Analyser:
    """Claims queued films, analyses them and records study + result objects in one transaction."""

    def __init__(self, store: Store, predictor: Predictor, *, worker: str, heatmap_sc: bool,
                 keep_images: bool = False, lease_s: float = 120.0, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.store, self.predictor, self.worker = store, predictor, worker
        self.heatmap_sc, self.keep_images, self.lease_s, self.max_pixels = heatmap_sc, keep_images, lease_s, max_pixels
        p = predictor
        self.positive_class = p.class_names[p.pos] if p.pos is not None else None

    def analyse(self, data: bytes) -> tuple[dict[str, Any], list[results.Built]]:
        """The finding for one film's bytes and its result objects. Raises ImageDecodeError or
        InputRejected as the API would."""
        p = self.predictor
        t0 = time.perf_counter()
        decoded = decode_image(data, name="received film", draft_size=p.draft_size, keep_gray=True,
                               threads=p.decode_threads, max_pixels=self.max_pixels)
        result, hmap = p.predict_with_map(decoded, heatmap=self.heatmap_sc, t0=t0)
        source = decoded.dicom_dataset  # the header the decoder read: the file is parsed once
        built = [results.build_sr(source, result)]
        if self.heatmap_sc:
            built.append(results.build_sc(source, result, decoded.image, hmap))
        return result, built

    def run_once(self) -> bool:
        """Analyse one queued film; False when the queue is empty."""
        claimed = queue.claim_instance(self.store, self.worker, self.lease_s)
        if claimed is None:
            return False
        sha = self.predictor.info.sha256
        try:
            result, built = self.analyse(claimed.data)
        except ImageDecodeError as exc:
            check = {"status": "rejected", "reasons": [{"code": "undecodable", "message": exc.reason,
                                                         "severity": "rejected"}]}
            queue.finish_refused(self.store, claimed, self.worker, detail=str(exc), input_check=check,
                                 model_sha256=sha)
            log.info("received film not analysed: %s", type(exc).__name__)
            return True
        except InputRejected as exc:
            queue.finish_refused(self.store, claimed, self.worker, detail=str(exc), input_check=exc.input_check,
                                 model_sha256=sha)
            log.info("received film refused by the input check: %s",
                     ",".join(r["code"] for r in exc.input_check["reasons"] if r["severity"] == "rejected"))
            return True
        except Exception as exc:  # a film no part of the pipeline foresaw: set it aside, keep the node up
            message = f"the film could not be analysed ({type(exc).__name__})"
            check = {"status": "rejected",
                     "reasons": [{"code": "analysis_error", "severity": "rejected", "message": message}]}
            queue.finish_refused(self.store, claimed, self.worker, detail=message, input_check=check,
                                 model_sha256=sha)
            log.error("received film could not be analysed: %s", type(exc).__name__)
            return True
        study_id = queue.finish_analysed(self.store, claimed, self.worker, result, built,
                                         positive_class=self.positive_class, keep_image=self.keep_images)
        if study_id is None:
            log.warning("lease on a film lapsed during its analysis; another worker owns it now")
        else:
            log.info("film analysed: %s (study %s, %d result object(s) queued)", result["prediction"], study_id,
                     len(built))
        return True


class Deliverer:
    """Claims due result objects and sends them; failures go back to the queue with backoff."""

    def __init__(self, store: Store, sender, *, worker: str, lease_s: float = 120.0, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0, max_refusals: int = 3):
        self.store, self.sender, self.worker, self.lease_s = store, sender, worker, lease_s
        self.backoff_s, self.max_backoff_s, self.max_refusals = backoff_s, max_backoff_s, max_refusals

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones: doubling, capped."""
        return min(self.backoff_s * 2 ** max(attempts - 1, 0), self.max_backoff_s)

    def run_once(self) -> bool:
        """Send the results now due (a batch, over one association); False when none is due."""
        outs = queue.claim_results(self.store, self.worker, self.lease_s)
        if not outs:
            return False
        try:
            errors = self.sender.send_many([o.data for o in outs])
        except Exception as exc:  # a network library's surprise must not end the loop
            errors = [SendError(type(exc).__name__, retry=True)] * len(outs)
        for out, exc in zip(outs, errors):
            if exc is None:
                queue.mark_sent(self.store, out.id)
                log.info("%s %s delivered to %s", out.kind.upper(), out.sop_instance_uid, self.sender.destination)
                continue
            permanent = not exc.retry and out.attempts >= self.max_refusals
            wait = None if permanent else self.delay(out.attempts)
            queue.mark_failed(self.store, out.id, str(exc), retry_in_s=wait)
            if permanent:
                log.error("%s %s not delivered, given up after %d refusals: %s", out.kind.upper(),
                          out.sop_instance_uid, out.attempts, exc)
            else:
                log.warning("%s waiting for delivery (attempt %d failed: %s); next try in %.0f s",
                            out.kind.upper(), out.attempts, exc, wait)
        return True


def loop(step, stop: threading.Event, wake: threading.Event | None = None, idle_s: float = 0.5) -> None:
    """Call `step()` until `stop`; when it has nothing to do, wait for `wake` or `idle_s`. A store
    that is briefly unavailable is waited out, not fatal."""
    while not stop.is_set():
        try:
            busy = step()
        except SQLAlchemyError as exc:
            log.error("study store unavailable (%s); retrying", type(exc).__name__)
            busy = False
            stop.wait(5.0)
        if not busy:
            if wake is not None:
                wake.wait(idle_s)
                wake.clear()
            else:
                stop.wait(idle_s)
