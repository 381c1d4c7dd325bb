"""Reception: the Storage SCP. Each instance is made durable in the study store and answered at
once; the model runs later, from the queue (worker.py).

Status codes: 0x0000 for every instance kept or deliberately not analysed (a refusal is a
decision, recorded in the refused list; the PACS must not retry it), 0xA700 when the store cannot
be written (the PACS retries later), 0xC210 when the dataset cannot be read.
"""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import Callable

from pydicom import dcmread
from sqlalchemy.exc import SQLAlchemyError

from mediflow.dicom_node import admission, queue
from mediflow.store.db import Store

log = logging.getLogger("mediflow.dicom_node")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
MAX_PDU_SIZE = 1024 * 1024


def _text(ds, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    return str(value).strip()[:limit] or None if value not in (None, "") else None


class Reception:
    """The C-STORE handler's logic, apart from the network (tests call `receive` directly too)."""

    def __init__(self, store: Store, *, model_sha256: str, on_queued: Callable[[], None] = lambda: None):
        self.store = store
        self.model_sha256 = model_sha256
        self.on_queued = on_queued

    def receive(self, data: bytes, calling_ae: str) -> int:
        """`data`: the instance in the DICOM file format. Returns the C-STORE status."""
        try:
            ds = dcmread(io.BytesIO(data), force=True)
            sop_uid = str(ds.SOPInstanceUID)
        except Exception as exc:  # a peer's bytes: any parse failure is the peer's, reported as such
            log.info("C-STORE from %s not readable (%s)", calling_ae, type(exc).__name__)
            return CANNOT_UNDERSTAND
        received = queue.Received(
            calling_ae=calling_ae[:16], sop_instance_uid=sop_uid[:64], sop_class_uid=_text(ds, "SOPClassUID", 64),
            study_instance_uid=_text(ds, "StudyInstanceUID", 64), accession_number=_text(ds, "AccessionNumber", 64),
            study_date=_text(ds, "StudyDate", 8), modality=_text(ds, "Modality", 16))
        try:
            own = {sop_uid} if queue.is_result_uid(self.store, sop_uid) else set()
            refusal = admission.admit(ds, own)
            if refusal is not None:
                new = queue.refuse(self.store, received, data, refusal, model_sha256=self.model_sha256)
                log.info("instance from %s not analysed (%s)%s", calling_ae, refusal.code,
                         "" if new else ", seen before")
                return SUCCESS
            if queue.enqueue(self.store, received, data):
                log.info("film from %s queued for analysis", calling_ae)
                self.on_queued()
            else:
                log.info("film from %s received before: nothing new to do", calling_ae)
            return SUCCESS
        except SQLAlchemyError as exc:
            log.error("study store unavailable (%s): answered C-STORE 0x%04X", type(exc).__name__, OUT_OF_RESOURCES)
            return OUT_OF_RESOURCES


def make_ae(ae_title: str, allowed_aes: list[str] | None):
    """The Storage SCP application entity: every storage SOP class (so that what is not analysed is
    received and refused with a reason, not rejected at negotiation), every transfer syntax, C-ECHO,
    and only the calling AE titles given."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    if allowed_aes:
        ae.require_calling_aet = allowed_aes  # others are rejected at association (A-ASSOCIATE-RJ)
    ae.maximum_associations = 32
    # A film of a few MB arrives in fewer, larger P-DATA PDUs than with pynetdicom's 16 KB default,
    # each of which costs Python work to reassemble; the peer still chooses anything smaller.
    ae.maximum_pdu_size = MAX_PDU_SIZE
    return ae


def start(reception: Reception, *, ae_title: str, host: str, port: int, allowed_aes: list[str] | None,
          ssl_context: ssl.SSLContext | None = None):
    """Start listening in background threads; returns the server (call `.shutdown()` to stop)."""
    from pynetdicom import evt

    def on_store(event) -> int:
        return reception.receive(event.encoded_dataset(include_meta=True), event.assoc.requestor.ae_title.strip())

    def on_rejected(event) -> None:
        log.info("association from %s refused (calling AE title not allowed)", event.assoc.requestor.address)

    ae = make_ae(ae_title, allowed_aes)
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                (evt.EVT_REJECTED, on_rejected)]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=ssl_context)
    log.info("DICOM node %s listening on %s:%d%s", ae_title, host, port, " (TLS)" if ssl_context else "")
    return server


