"""Delivering result objects: C-STORE to a DICOM node, or STOW-RS to a DICOMweb server.

`send_many` makes one attempt per object and reports a SendError for each failure, saying whether
trying again can help (the destination is down or busy) or not (it refused the object for good);
the worker (worker.py) keeps the result queued between attempts, with backoff.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

log = logging.getLogger("mediflow.dicom_node")


class SendError(Exception):
    def __init__(self, message: str, *, retry: bool):
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class DicomDestination:
    """`AE@host:port`, as --send-to gives it."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomDestination:
        m = re.fullmatch(r"([^@\s\\]{1,16})@([^:\s]+):(\d{1,5})", text.strip())
        if not m or not 0 < int(m.group(3)) < 65536:
            raise ValueError(f"{text!r} is not AE@HOST:PORT (e.g. TESTPACS@127.0.0.1:4242)")
        return cls(m.group(1), m.group(2), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class CStoreSender:
    """One association per batch of due results: a fresh association per batch notices a
    restarted PACS at once, and a backlog does not pay an association per object."""

    def __init__(self, destination: DicomDestination, *, ae_title: str, timeout_s: float = 30.0):
        self.destination = destination
        self.ae_title = ae_title
        self.timeout_s = timeout_s

    def send_many(self, items: list[bytes]) -> list[SendError | None]:
        """Send `items` over one association; for each, None (stored) or why not."""
        from pydicom import dcmread
        from pynetdicom import AE

        datasets = [dcmread(io.BytesIO(data)) for data in items]
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = min(self.timeout_s, 10.0)
        for context in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
            ae.add_requested_context(*context)
        d = self.destination
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            # Refused or unreachable: both may change (a PACS restarting, a config being fixed).
            err = SendError(f"no association with {d}" + (" (rejected)" if assoc.is_rejected else ""), retry=True)
            return [err] * len(items)
        try:
            return [self._store(assoc, ds) for ds in datasets]
        finally:
            if assoc.is_established:
                assoc.release()

    def _store(self, assoc, ds) -> SendError | None:
        d = self.destination
        if not assoc.is_established:
            return SendError(f"association with {d} ended", retry=True)
        status = assoc.send_c_store(ds)
        code = getattr(status, "Status", None)
        if code is None:
            return SendError(f"no C-STORE response from {d}", retry=True)
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or a warning: stored
            return None
        # 0xA7xx: out of resources; anything else: refused (the object will not do better next time).
        return SendError(f"{d} answered C-STORE status 0x{code:04X}", retry=(code & 0xFF00) == 0xA700)


class StowSender:
    """DICOMweb STOW-RS: one multipart/related POST per object."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.headers = headers or {}
        self.timeout_s = timeout_s

    @property
    def destination(self) -> str:
        return self.url

    def send_many(self, items: list[bytes]) -> list[SendError | None]:
        """One POST per object; for each, None (stored) or why not."""
        out: list[SendError | None] = []
        for data in items:
            try:
                self.send(data)
                out.append(None)
            except SendError as exc:
                out.append(exc)
        return out

    def send(self, data: bytes) -> None:
        import uuid

        import httpx

        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
                + f"\r\n--{boundary}--\r\n".encode())
        headers = {**self.headers, "Accept": "application/dicom+json",
                   "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
        url = self.url if self.url.endswith("/studies") else self.url + "/studies"
        try:
            resp = httpx.post(url, content=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise SendError(f"STOW-RS to {self.url} failed: {type(exc).__name__}", retry=True) from None
        if resp.status_code in (200, 202):
            return
        retry = resp.status_code in (408, 429) or resp.status_code >= 500 or resp.status_code in (401, 403)
        raise SendError(f"STOW-RS to {self.url} answered HTTP {resp.status_code}", retry=retry)
