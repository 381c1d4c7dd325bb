"""The pieces of the test environment that other tests rely on, checked one by one so that a CI log
names what is missing. On a developer's machine a missing piece skips; under CI=true it fails
(conftest.environment_missing). Node and npm are required once the web app (frontend/package.json)
exists; the DICOM node's tests need Orthanc with its DICOMweb plugin, dcmtk (storescu, echoscu,
dsr2html) and dicom3tools (dciodvfy)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, FRONTEND, environment_missing
from db_fixtures import POSTGRES_ENV
from orthanc_process import DICOMWEB_PLUGIN, ORTHANC


def check_chromium() -> None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        environment_missing(f"no executable Chromium at {CHROMIUM} (apt-get install -y chromium)")
    r = subprocess.run([str(CHROMIUM), *CHROMIUM_ARGS, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Chromium" in r.stdout, r.stderr[-500:]


def check_playwright() -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        environment_missing("the playwright package is not installed (pip install -e '.[test]')")
    assert callable(sync_playwright)


def check_postgres() -> None:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        environment_missing(f"{POSTGRES_ENV} is not set (.ci/run starts a PostgreSQL server and sets it)")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            # The store tests create one database per test.
            assert conn.execute(text("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user")).scalar()
    finally:
        engine.dispose()


def check_tool(name: str) -> None:
    path = shutil.which(name)
    if path is None:
        environment_missing(f"the web app (frontend/package.json) needs {name} on PATH (apt-get install -y nodejs npm)")
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-500:]


DICOM_INSTALL = "apt-get install -y orthanc orthanc-dicomweb dcmtk dicom3tools"


def check_orthanc() -> None:
    if not (shutil.which("Orthanc") or os.access(ORTHANC, os.X_OK)):
        environment_missing(f"no Orthanc at {ORTHANC} ({DICOM_INSTALL})")
    r = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(f"{ORTHANC} 1."), (r.stdout + r.stderr)[-500:]
    if not DICOMWEB_PLUGIN.is_file():
        environment_missing(f"no Orthanc DICOMweb plugin at {DICOMWEB_PLUGIN} ({DICOM_INSTALL})")


def check_dcmtk(name: str) -> None:
    path = shutil.which(name)
    if path is None:
        environment_missing(f"the DICOM node tests need dcmtk's {name} on PATH ({DICOM_INSTALL})")
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    # pynetdicom installs its own storescu/echoscu scripts: a venv's bin first on PATH shadows dcmtk's.
    assert r.returncode == 0 and f"$dcmtk: {name} v3." in r.stdout, \
        f"{path} is not dcmtk's {name}: {(r.stdout + r.stderr)[-300:]}"


def check_dsr2html(tmp_path) -> None:
    """dsr2html renders the node's SR (docs/pacs.md's picture of what a radiologist sees)."""
    check_dcmtk("dsr2html")
    import numpy as np
    from conftest import xray_like
    from dicom_factory import image_dataset
    from dicom_node_process import CR_STORAGE

    from mediflow.dicom_node.results import build_sr

    film = image_dataset(np.asarray(xray_like(1, 3, 64)), sop_class=CR_STORAGE)
    film.Modality = "CR"
    model = {"architecture": "efficientnet_lite0", "version": "test", "sha256": "ab" * 32}
    result = {"prediction": "PNEUMONIA", "confidence": 0.8, "probabilities": {"NORMAL": 0.2, "PNEUMONIA": 0.8},
              "needs_review": False, "threshold": 0.5, "model": model, "input_check": {"status": "ok", "reasons": []},
              "operating_point": {"positive_class": "PNEUMONIA", "calibrated_threshold": 0.4,
                                  "scale": "operating-point-centred"}}
    sr = tmp_path / "sr.dcm"
    sr.write_bytes(build_sr(film, result).data)
    r = subprocess.run(["dsr2html", str(sr)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "<html" in r.stdout.lower(), r.stderr[-500:]
    assert "Pneumonia" in r.stdout and "PRELIMINARY" in r.stdout.upper(), r.stdout[-1000:]


def check_dciodvfy() -> None:
    path = shutil.which("dciodvfy")
    if path is None:
        environment_missing(f"the DICOM node tests check the SR and SC with dicom3tools' dciodvfy ({DICOM_INSTALL})")
    r = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "dicom3tools" in r.stdout + r.stderr, (r.stdout + r.stderr)[-500:]


CHECKS = {"chromium": check_chromium, "playwright": check_playwright, "postgresql": check_postgres,
          "orthanc": check_orthanc, "storescu": lambda: check_dcmtk("storescu"),
          "echoscu": lambda: check_dcmtk("echoscu"), "dciodvfy": check_dciodvfy}
if (FRONTEND / "package.json").is_file():
    CHECKS |= {"node": lambda: check_tool("node"), "npm": lambda: check_tool("npm")}


@pytest.mark.parametrize("piece", sorted(CHECKS))
def test_required_environment_piece(piece: str):
    CHECKS[piece]()


def test_required_environment_piece_dsr2html(tmp_path):
    check_dsr2html(tmp_path)
