"""The node's two loops: analysing queued films, and delivering their results.

Analysis runs the API's own path (decode_image, then the Predictor's checks, model and response;
several queued films share one model pass), so the SR's finding and probability equal
`POST /api/vision/analyze` on the same bytes.
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

from mediflow.data.decoded import DecodedImage
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


def _undecodable(exc: ImageDecodeError) -> dict[str, Any]:
    return {"status": "rejected", "reasons": [{"code": "undecodable", "message": exc.reason, "severity": "rejected"}]}


def _analysis_error(exc: Exception) -> tuple[str, dict[str, Any]]:
    message = f"the film could not be analysed ({type(exc).__name__})"
    return message, {"status": "rejected",
                     "reasons": [{"code": "analysis_error", "severity": "rejected", "message": message}]}


class Analyser:
    """Claims queued films (up to `batch` at once), analyses them and records their studies and result
    objects in one transaction.

    A batch is what is waiting when the worker looks, so a quiet node still reads each film as it
    arrives; under a backlog the model runs once per batch and the store commits once per batch.
    Killed mid-batch, the batch's leases run out and its films are analysed again: nothing was
    recorded, and their results have deterministic UIDs."""

    def __init__(self, store: Store, predictor: Predictor, *, worker: str, heatmap_sc: bool,
                 keep_images: bool = False, lease_s: float = 120.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 batch: int = 8):
        self.store, self.predictor, self.worker = store, predictor, worker
        self.heatmap_sc, self.keep_images, self.lease_s, self.max_pixels = heatmap_sc, keep_images, lease_s, max_pixels
        self.batch = batch
        p = predictor
        self.positive_class = p.class_names[p.pos] if p.pos is not None else None

    def _decode(self, data: bytes) -> DecodedImage:
        p = self.predictor
        return decode_image(data, name="received film", draft_size=p.draft_size, keep_gray=True,
                            threads=p.decode_threads, max_pixels=self.max_pixels)

    def _build(self, decoded: DecodedImage, result: dict[str, Any], hmap) -> list[results.Built]:
        source = decoded.dicom_dataset  # the header the decoder read: the file is parsed once
        built = [results.build_sr(source, result)]
        if self.heatmap_sc:
            built.append(results.build_sc(source, result, decoded.image, hmap))
        return built

    def analyse(self, data: bytes) -> tuple[dict[str, Any], list[results.Built]]:
        """The finding for one film's bytes and its result objects. Raises ImageDecodeError or
        InputRejected as the API would."""
        t0 = time.perf_counter()
        decoded = self._decode(data)
        result, hmap = self.predictor.predict_with_map(decoded, heatmap=self.heatmap_sc, t0=t0)
        return result, self._build(decoded, result, hmap)

    def _outcome_alone(self, claimed: queue.Claimed) -> queue.Analysed | queue.Refused:
        """One film through `analyse`, every failure turned into a refusal with its reason."""
        try:
            result, built = self.analyse(claimed.data)
            return queue.Analysed(claimed, result, built)
        except ImageDecodeError as exc:
            return queue.Refused(claimed, str(exc), _undecodable(exc))
        except InputRejected as exc:
            return queue.Refused(claimed, str(exc), exc.input_check)
        except Exception as exc:  # a film no part of the pipeline foresaw: set it aside, keep the node up
            return queue.Refused(claimed, *_analysis_error(exc))

    def outcomes(self, claimed: list[queue.Claimed]) -> list[queue.Analysed | queue.Refused]:
        """Each claimed film decoded, then one model pass over the batch (`Predictor.predict_many`,
        the API's checks and response film by film), then its result objects built."""
        t0 = time.perf_counter()
        out: list[queue.Analysed | queue.Refused | None] = [None] * len(claimed)
        decoded = []
        for i, c in enumerate(claimed):
            try:
                decoded.append((i, self._decode(c.data)))
            except ImageDecodeError as exc:
                out[i] = queue.Refused(c, str(exc), _undecodable(exc))
            except Exception:  # the single-film path below reports it with its reason
                out[i] = self._outcome_alone(c)
        try:
            answers = self.predictor.predict_many([img for _, img in decoded], heatmap=self.heatmap_sc, t0=t0)
        except Exception:  # one film broke the batch's model pass: each film on its own finds which
            for i, _ in decoded:
                out[i] = self._outcome_alone(claimed[i])
            return out  # type: ignore[return-value]
        for (i, img), answer in zip(decoded, answers):
            c = claimed[i]
            if isinstance(answer, InputRejected):
                out[i] = queue.Refused(c, str(answer), answer.input_check)
                continue
            result, hmap = answer
            try:
                out[i] = queue.Analysed(c, result, self._build(img, result, hmap))
            except Exception as exc:
                out[i] = queue.Refused(c, *_analysis_error(exc))
        return out  # type: ignore[return-value]

    def run_once(self) -> bool:
        """Analyse the films now queued (up to `batch`); False when the queue is empty."""
        claimed = queue.claim_instances(self.store, self.worker, self.lease_s, limit=self.batch)
        if not claimed:
            return False
        done = self.outcomes(claimed)
        recorded = queue.finish(self.store, self.worker, done, positive_class=self.positive_class,
                                keep_image=self.keep_images, model_sha256=self.predictor.info.sha256)
        for outcome, rec in zip(done, recorded):
            if rec is None:
                log.warning("lease on a film lapsed during its analysis; another worker owns it now")
            elif isinstance(outcome, queue.Analysed):
                log.info("film analysed: %s (study %s, %d result object(s) queued)", outcome.result["prediction"],
                         rec, len(outcome.results))
            elif outcome.input_check["reasons"] and outcome.input_check["reasons"][0]["code"] == "analysis_error":
                log.error("received film could not be analysed: %s", outcome.detail)
            else:
                log.info("received film not analysed: %s",
                         ",".join(r["code"] for r in outcome.input_check["reasons"] if r["severity"] == "rejected"))
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
        # One commit for the batch: killed before it, the batch goes out again with the same UIDs,
        # which the PACS stores once.
        queue.mark_sent(self.store, *(out.id for out, exc in zip(outs, errors) if exc is None))
        for out, exc in zip(outs, errors):
            if exc is None:
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
