"""`mediflow dicom-node --ae-title MEDIFLOW --port 11112 --allow-ae TESTPACS --send-to TESTPACS@HOST:PORT`"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from mediflow.errors import MediFlowError

log = logging.getLogger("mediflow.dicom_node")
STOW_AUTH_ENV = "MEDIFLOW_STOW_AUTH"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("dicom-node", help="DICOM node: analyse chest films routed from a PACS, send back an SR",
                       description="A DICOM Storage SCP (with C-ECHO). Chest films (CR/DX, frontal) it receives "
                                   "are kept in the study store, analysed from a queue, and a PRELIMINARY "
                                   "TID 1500 Structured Report (and with --heatmap-sc a Secondary Capture) is "
                                   "sent back into the same study. See docs/pacs.md.")
    p.add_argument("--ae-title", default="MEDIFLOW", help="this node's AE title (default MEDIFLOW)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument("--no-listen", action="store_true",
                   help="run no SCP: only analyse and deliver from a shared PostgreSQL queue (scale-out)")
    p.add_argument("--allow-ae", help="comma-separated calling AE titles allowed to associate (default: any)")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--send-to", metavar="AE@HOST:PORT", help="where results go by C-STORE (the PACS)")
    dest.add_argument("--stow-url", help="DICOMweb root (e.g. http://pacs:8042/dicom-web) for STOW-RS instead")
    p.add_argument("--stow-auth-header", metavar="ENV_VAR",
                   help=f"name of an environment variable holding the STOW-RS Authorization header value "
                        f"(default {STOW_AUTH_ENV} when set); never give secrets on the command line")
    p.add_argument("--heatmap-sc", action="store_true",
                   help="also send a Secondary Capture: the film with the heatmap and finding burned in")
    p.add_argument("--database-url", help="study store (default: MEDIFLOW_DATABASE_URL, else the SQLite file "
                                          "in the user's data folder), as for `mediflow serve`")
    p.add_argument("--store-images", action="store_true", help="keep each analysed film's bytes in the store")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--workers", type=int, default=2,
                   help="analysis threads in this process (default 2: one decodes or runs the model while the "
                        "other builds an SR); 0: only receive and deliver, leaving the "
                        "analyses to worker-only processes (--no-listen) on the same PostgreSQL queue")
    p.add_argument("--batch", type=int, default=8,
                   help="films an analysis thread takes from the queue at once, when that many wait: one model "
                        "pass and one store commit for them (default 8; 1: one film at a time)")
    p.add_argument("--health-port", type=int, help="serve GET /health (queue state) on 127.0.0.1:PORT")
    p.add_argument("--retry-backoff", type=float, default=2.0,
                   help="seconds before the first re-send of a result; doubles per failure (default 2)")
    p.add_argument("--max-retry-backoff", type=float, default=60.0,
                   help="longest wait between re-sends while the destination is down (default 60)")
    p.add_argument("--tls-cert", help="PEM certificate: accept DICOM over TLS only")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-ca", help="PEM CA bundle: require and verify client certificates")
    return p


def _sender(args: argparse.Namespace):
    from mediflow.dicom_node.sender import CStoreSender, DicomDestination, StowSender

    if args.send_to:
        try:
            return CStoreSender(DicomDestination.parse(args.send_to), ae_title=args.ae_title)
        except ValueError as exc:
            raise MediFlowError(f"--send-to: {exc}") from None
    if args.stow_url:
        env = args.stow_auth_header or STOW_AUTH_ENV
        value = os.environ.get(env)
        if args.stow_auth_header and not value:
            raise MediFlowError(f"--stow-auth-header: environment variable {env} is not set")
        return StowSender(args.stow_url, headers={"Authorization": value} if value else None)
    log.warning("no --send-to or --stow-url: results are kept in the store and not delivered")
    return None


def _ssl_context(args: argparse.Namespace):
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None
    import ssl

    if not (args.tls_cert and args.tls_key):
        raise MediFlowError("TLS needs both --tls-cert and --tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_ca:
            ctx.load_verify_locations(args.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise MediFlowError(f"cannot load the TLS files: {exc}") from None
    return ctx


def run(args: argparse.Namespace) -> int:
    from mediflow.dicom_node.node import Node, NodeConfig
    from mediflow.inference.backends import serving_threads
    from mediflow.inference.predictor import Predictor
    from mediflow.store.db import Store, describe_url, resolve_database_url

    if not args.verbose:
        # pynetdicom narrates every association and highdicom every copied module at INFO.
        for name in ("pynetdicom", "highdicom"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not args.ae_title or len(args.ae_title) > 16:
        raise MediFlowError("--ae-title must be 1 to 16 characters")
    if args.workers < 0 or (args.workers == 0 and args.no_listen):
        raise MediFlowError("--workers must be at least 1 with --no-listen (and never negative)")
    if not 1 <= args.batch <= 64:
        raise MediFlowError("--batch must be 1 to 64")
    allowed = [a.strip() for a in (args.allow_ae or "").split(",") if a.strip()] or None
    if allowed is None:
        log.warning("no --allow-ae: any calling AE title may store to this node")
    sender = _sender(args)
    ssl_context = _ssl_context(args)
    url = resolve_database_url(args.database_url)
    store = Store.open(url, store_images=args.store_images)
    predictor = Predictor.load(args.model, backend=args.backend, threads=args.threads or serving_threads(),
                               serving=True)
    log.info("model %s (sha256 %s, %s backend); study store %s", predictor.info.architecture,
             predictor.info.sha256[:12], predictor.backend_name, describe_url(url))
    config = NodeConfig(ae_title=args.ae_title, host=args.host, port=None if args.no_listen else args.port,
                        allowed_aes=allowed, heatmap_sc=args.heatmap_sc, keep_images=args.store_images,
                        health_port=args.health_port, analysis_workers=args.workers, batch=args.batch,
                        backoff_s=args.retry_backoff, max_backoff_s=args.max_retry_backoff, ssl_context=ssl_context)
    node = Node(store, predictor, sender, config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
    except OSError as exc:
        raise MediFlowError(f"cannot listen on port {args.port}: {exc.strerror}") from None
    stop.wait()
    log.info("stopping: no new associations; finishing the current analysis and delivery")
    node.stop()
    store.dispose()
    return 0
