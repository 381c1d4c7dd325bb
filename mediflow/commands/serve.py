"""`mediflow serve [--model PATH] [--host 127.0.0.1] [--port 8000]`"""

from __future__ import annotations

import argparse
import logging
import os

from mediflow.commands import _clinical_options as clinical
from mediflow.errors import MediFlowError

log = logging.getLogger("mediflow.serve")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve the API and the web page",
                       description="Settings also come from MEDIFLOW_* environment variables "
                                   "(MEDIFLOW_MODEL_PATH, MEDIFLOW_MAX_UPLOAD_BYTES, MEDIFLOW_CORS_ORIGINS, ...); "
                                   "flags win.")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"],
                   help="onnx: ONNX Runtime on MODEL.onnx (or MODEL.int8.onnx) exported next to the checkpoint, or "
                        "an .onnx --model; auto (default): onnx when such an export exists, else torch")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for one image while uploads follow one another "
                                                "(default: all cores; one after an idle spell; not spinning between "
                                                "requests)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, help="upload size limit in MB (default 20)")
    p.add_argument("--max-uploads-in-flight", type=int,
                   help="full-size uploads held in memory at once (each charged the bytes it has sent); "
                        "beyond that, 503 with Retry-After (default 16)")
    p.add_argument("--min-upload-rate", type=float,
                   help="bytes/s an upload must average after its first 10 s; slower ones get 408 (default 1024; "
                        "0: none)")
    p.add_argument("--retry-after", type=int, help="seconds in the Retry-After header of a busy 503 (default 5)")
    p.add_argument("--upload-timeout", type=float,
                   help="seconds a client has to send a whole upload; slower ones get 408 (default 120)")
    p.add_argument("--db-timeout", type=float,
                   help="seconds a request may wait on the study database (connecting, queuing for a connection, "
                        "one transaction); longer gets 503 with Retry-After (default 10)")
    p.add_argument("--header-timeout", type=float,
                   help="seconds a client has to send a request's headers; slower ones get 408 (default 10)")
    p.add_argument("--review-below", type=float, help="confidence under which needs_review is set (default 0.70)")
    p.add_argument("--cors-origin", action="append",
                   help="allowed cross-origin caller, e.g. https://ris.example.org (repeatable); default none")
    clinical.add_arguments(p)
    return p


def settings_from_args(args: argparse.Namespace):
    """Environment settings with the given flags on top; invalid values -> one-line MediFlowError."""
    from pydantic import ValidationError

    from mediflow.serving.settings import MB, Settings

    flags = {
        "model_path": args.model,
        "backend": args.backend,
        "threads": args.threads,
        "host": args.host,
        "port": args.port,
        "max_upload_bytes": None if args.max_upload_mb is None else int(args.max_upload_mb * MB),
        "max_uploads_in_flight": args.max_uploads_in_flight,
        "retry_after_s": args.retry_after,
        "min_upload_rate": args.min_upload_rate,
        "upload_timeout_s": args.upload_timeout,
        "db_timeout_s": args.db_timeout,
        "header_timeout_s": args.header_timeout,
        "review_below": args.review_below,
        "cors_origins": args.cors_origin,
        **clinical.overrides(args, os.environ.get("MEDIFLOW_DATABASE_URL")),
    }
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None or k == "database_url"})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise MediFlowError(f"invalid setting {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mediflow.serving.app import create_app, load_predictor
    from mediflow.serving.protocol import bounded_protocol

    settings = settings_from_args(args)
    clinical.check_exposure(settings, insecure=args.insecure)
    # Load the model before binding the port, so a bad --model is a one-line error, not a crash loop.
    predictor = load_predictor(settings)
    app = create_app(settings, predictor=predictor)
    log.info("serving %s (sha256 %s, %s backend) on http://%s:%d/", predictor.info.architecture,
             predictor.info.sha256[:12], predictor.backend_name, settings.host, settings.port)
    # No access log: request lines carry nothing useful and uploads must leave no trace.
    # No `server` header: it tells a prober which HTTP stack (and which version) to aim at.
    # The HTTP protocol bounds each request's head (size, header count, time) before the app sees it.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                server_header=False, http=bounded_protocol(head_timeout_s=settings.header_timeout_s))
    return 0
