"""`mediflow serve [--model PATH] [--host 127.0.0.1] [--port 8000]`"""

from __future__ import annotations

import argparse
import logging


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve the API and the web page",
                       description="Settings also come from MEDIFLOW_* environment variables; flags win.")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"],
                   help="onnx: ONNX Runtime on MODEL.onnx (or MODEL.int8.onnx) exported next to the checkpoint, or "
                        "an .onnx --model; auto (default): onnx when such an export exists, else torch")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, help="upload size limit in MB (default 20)")
    p.add_argument("--review-below", type=float, help="confidence under which needs_review is set (default 0.70)")
    p.add_argument("--cors-origin", action="append", help="allowed cross-origin caller (repeatable); default none")
    return p


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    overrides = {}
    if args.model:
        overrides["model_path"] = args.model
    if args.backend:
        overrides["backend"] = args.backend
    if args.threads:
        overrides["threads"] = args.threads
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
    settings = Settings(**overrides)
    # Load the model before binding the port, so a bad --model is a one-line error, not a crash loop.
    from mediflow.serving.app import load_predictor

    predictor = load_predictor(settings)
    logging.getLogger("mediflow.serve").info("model %s on the %s backend", predictor.info.path, predictor.backend_name)
    app = create_app(settings, predictor=predictor)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
    return 0
