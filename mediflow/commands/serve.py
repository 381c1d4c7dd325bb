"""`mediflow serve [--model PATH] [--host 127.0.0.1] [--port 8000]`"""

from __future__ import annotations

import argparse
import os

from mediflow.commands import _clinical_options as clinical


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve the API and the web page",
                       description="Settings also come from MEDIFLOW_* environment variables; flags win.")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, help="upload size limit in MB (default 20)")
    p.add_argument("--review-below", type=float, help="confidence under which needs_review is set (default 0.70)")
    p.add_argument("--cors-origin", action="append", help="allowed cross-origin caller (repeatable); default none")
    clinical.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    overrides = {}
    if args.model:
        overrides["model_path"] = args.model
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.max_upload_mb:
        overrides["max_upload_bytes"] = int(args.max_upload_mb * 1024 * 1024)
    if args.review_below is not None:
        overrides["review_below"] = args.review_below
    if args.cors_origin:
        overrides["cors_origins"] = args.cors_origin
    overrides.update(clinical.overrides(args, os.environ.get("MEDIFLOW_DATABASE_URL")))
    settings = Settings(**overrides)
    clinical.check_exposure(settings, insecure=args.insecure)
    # Load the model before binding the port, so a bad --model is a one-line error, not a crash loop.
    from mediflow.inference.predictor import Predictor

    predictor = Predictor.load(settings.model_path, device=settings.device, review_below=settings.review_below)
    app = create_app(settings, predictor=predictor)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
    return 0
