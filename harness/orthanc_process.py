"""A real Orthanc (Debian's `orthanc`) in the foreground, for the DICOM node tests and benchmark:
temporary storage, loopback ports, the node as a DicomModality, and auto-routing by a Lua script
(`routing`: "study", the whole study each time it becomes stable, so the node's own results come
back to it too; "instance", each frontal chest film as it is stored; None: no routing)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
from startup import free_port, wait_ready

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"

ROUTING_LUA = {
    # The whole study each time it becomes stable: the node's own results come back to it too.
    "study": """
function OnStableStudy(studyId, tags, metadata)
  RestApiPost('/modalities/mediflow/store', studyId)
end
""",
    # Each frontal chest film as it is stored (docs/pacs.md recommends this one). SendToModality
    # queues the film on Orthanc's Lua job, which sends consecutive films over one association kept
    # open (DicomAssociationCloseDelay); a synchronous RestApiPost would open one per film and hold
    # Orthanc's Lua thread while it is sent.
    "instance": """
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality'] or ''
  local part = string.upper(tags['BodyPartExamined'] or 'CHEST')
  if (modality == 'CR' or modality == 'DX') and part == 'CHEST'
     and origin['RemoteAet'] ~= 'MEDIFLOW' then
    SendToModality(instanceId, 'mediflow')
  end
end
""",
}


def orthanc_config(folder: Path, *, aet: str, dicom_port: int, http_port: int, node_aet: str, node_port: int,
                   routing: str | None = "study", stable_age_s: int = 1, dicomweb: bool = True,
                   http_users: dict[str, str] | None = None) -> dict:
    """A working Orthanc configuration (also the one docs/pacs.md shows)."""
    config = {
        "Name": "MediFlow test PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(http_users),
        "RegisteredUsers": http_users or {},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {"mediflow": [node_aet, "127.0.0.1", node_port]},
        "DicomAssociationCloseDelay": 5,  # the Lua routing job keeps its association open between films
        "StableAge": stable_age_s,
        "ConcurrentJobs": 2,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
    }
    if routing:
        script = folder / "route.lua"
        script.write_text(ROUTING_LUA[routing])
        config["LuaScripts"] = [str(script)]
    return config


class OrthancProcess:
    def __init__(self, folder: Path, *, aet: str = "TESTPACS", node_aet: str = "MEDIFLOW", node_port: int,
                 routing: str | None = "study", http_users: dict[str, str] | None = None, stable_age_s: int = 1):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.auth = next(iter(http_users.items())) if http_users else None
        self.config = orthanc_config(folder, aet=aet, dicom_port=self.dicom_port, http_port=self.http_port,
                                     node_aet=node_aet, node_port=node_port, routing=routing,
                                     http_users=http_users, stable_age_s=stable_age_s)
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 60.0) -> OrthancProcess:
        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_ready(self.proc, lambda: self.get("/system").status_code == 200,
                   name="Orthanc", timeout=timeout, log=self.log, give_up=self.stop)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, auth=self.auth, timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, auth=self.auth, timeout=60, **kwargs)

    def upload(self, data: bytes) -> httpx.Response:
        """Store an instance by REST (what a modality's C-STORE would do)."""
        return self.post("/instances", content=data, headers={"Content-Type": "application/dicom"})

    def instances(self, study_uid: str | None = None, modality: str | None = None) -> list[dict]:
        """Instances (their main DICOM tags), optionally of one study and one modality."""
        query = {}
        if study_uid:
            query["StudyInstanceUID"] = study_uid
        if modality:
            query["Modality"] = modality
        found = self.post("/tools/find", json={"Level": "Instance", "Query": query, "Expand": True}).json()
        return found

    def qido_instances(self, study_uid: str, modality: str) -> list[dict]:
        """QIDO-RS (the DICOMweb plugin): the study's instances of one modality."""
        r = self.get(f"/dicom-web/studies/{study_uid}/instances", params={"Modality": modality})
        r.raise_for_status()
        return r.json() if r.content else []

    def file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file").content

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""
