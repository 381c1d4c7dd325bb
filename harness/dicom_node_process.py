"""A real `mediflow dicom-node` in a subprocess, and helpers for the DICOM node tests and benchmark:
dcmtk's storescu/echoscu, chest films wrapped into DICOM, and the node's store read back."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from startup import free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("Orthanc", "storescu", "echoscu", "dciodvfy")
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]


def film_dataset(image_path: Path, *, modality: str = "CR", view: str | None = "PA", body_part: str | None = "CHEST",
                 study_uid: str | None = None):
    """A chest film from an image file, wrapped into a CR/DX instance (dicom_factory.py)."""
    from dicom_factory import DX_STORAGE, image_dataset

    arr = np.asarray(Image.open(image_path).convert("L"))
    ds = image_dataset(arr, sop_class={"CR": CR_STORAGE, "CT": CT_STORAGE}.get(modality, DX_STORAGE))
    ds.Modality = modality
    for keyword, value in (("ViewPosition", view), ("BodyPartExamined", body_part)):
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.AccessionNumber = "ACC" + str(ds.SOPInstanceUID)[-8:]
    ds.StudyDate = "20261207"
    if study_uid:
        ds.StudyInstanceUID = study_uid
    return ds


def write(ds, path: Path) -> Path:
    from dicom_factory import to_bytes

    path.write_bytes(to_bytes(ds))
    return path


def dcmtk(tool: str) -> str:
    """dcmtk's `tool` (storescu, echoscu): pynetdicom installs Python scripts of the same names into
    the virtual environment's bin/, which come first on PATH when it is activated."""
    venv_bin = Path(sys.prefix) / "bin"
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if Path(d) != venv_bin)
    return shutil.which(tool, path=path) or tool


def storescu(port: int, files: list[Path], *, aet: str = "TESTPACS", aec: str = "MEDIFLOW",
             timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, *, aet: str = "TESTPACS", aec: str = "MEDIFLOW") -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("echoscu"), "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


class NodeProcess:
    """`python -m mediflow dicom-node ...` on a free port (or worker-only with listen=False)."""

    def __init__(self, folder: Path, database_url: str, *, send_to: str | None = None, listen: bool = True,
                 allow_ae: str = "TESTPACS", extra: list[str] | None = None, name: str = "node",
                 port: int | None = None, env: dict[str, str] | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.health_port = free_port()
        self.database_url = database_url
        self.log_path = folder / f"{name}.log"
        args = ["--ae-title", "MEDIFLOW", "--allow-ae", allow_ae, "--database-url", database_url,
                "--health-port", str(self.health_port), "--retry-backoff", "0.5", "--max-retry-backoff", "2"]
        args += ["--port", str(self.port)] if listen else ["--no-listen"]
        if send_to:
            args += ["--send-to", send_to]
        self.args = args + (extra or [])
        self.listen = listen
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIFLOW_")}
        env["PYTHONPATH"] = str(REPO)
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mediflow", "dicom-node", *self.args], cwd=REPO,
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_ready(self.proc, self._ready, name="dicom-node", timeout=timeout, log=self.log, give_up=self.kill)
        return self

    def _ready(self) -> bool:
        """Its health endpoint answers and, when it listens, its DICOM port accepts connections."""
        self.health()
        return not self.listen or _accepts(self.port)

    def health(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.health_port}/health", timeout=5).json()

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a power cut or OOM kill would leave it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def sr_finding(data: bytes) -> dict:
    """The SR's coded finding, probability and flags, read back with highdicom."""
    import highdicom as hd
    from pydicom import dcmread

    sr = hd.sr.Comprehensive3DSR.from_dataset(dcmread(io.BytesIO(data)))
    group = sr.content.get_image_measurement_groups()[0]
    evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    measurement = group.get_measurements()[0]
    return {"pneumonia": evaluations["Pneumonia"], "needs_review": evaluations["Needs review by a clinician"],
            "probability": float(measurement.value), "probability_name": measurement.name.meaning,
            "preliminary": sr.PreliminaryFlag, "study_uid": str(sr.StudyInstanceUID),
            "series_uid": str(sr.SeriesInstanceUID), "sop_uid": str(sr.SOPInstanceUID),
            "source_uids": [str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence]}


def store_rows(database_url: str) -> dict:
    """The node's tables, read with SQL (a second connection, as an operator would)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                "instances": [dict(r._mapping) for r in conn.execute(text(
                    "SELECT sop_instance_uid, state, reason, attempts, worker, study_id, data IS NULL AS no_bytes "
                    "FROM dicom_instances"))],
                "results": [dict(r._mapping) for r in conn.execute(text(
                    "SELECT kind, sop_instance_uid, state, attempts FROM dicom_results"))],
                "studies": conn.execute(text("SELECT count(*) FROM studies")).scalar(),
                "refused": [dict(r._mapping) for r in conn.execute(text(
                    "SELECT detail, sop_instance_uid FROM refused_inputs"))],
            }
    finally:
        engine.dispose()


def worklist(database_url: str) -> list[dict]:
    """The worklist (`GET /api/studies?status=all`) of a server on the node's study store."""
    from fastapi.testclient import TestClient

    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    app = create_app(Settings(database_url=database_url, api_keys=None, api_keys_file=None))
    with TestClient(app) as client:
        r = client.get("/api/studies", params={"status": "all"})
    assert r.status_code == 200, r.text
    app.state.store.dispose()
    return r.json()["items"]


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)


class PostgresDatabase:
    """A fresh database on the server of `base`, dropped afterwards without FORCE and retried: right
    after a big load autovacuum may hold it a moment, and only a superuser may end that."""

    def __init__(self, base: str):
        import uuid

        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.name = f"mediflow_test_{uuid.uuid4().hex[:12]}"
        self.admin = create_engine(base, isolation_level="AUTOCOMMIT")
        self.url = make_url(base).set(database=self.name).render_as_string(hide_password=False)

    def __enter__(self) -> str:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self.url

    def __exit__(self, *exc) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        for _attempt in range(10):
            try:
                with self.admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}"'))
                break
            except SQLAlchemyError:
                time.sleep(3)
        else:
            print(f"could not drop the database {self.name}", file=sys.stderr)
        self.admin.dispose()
