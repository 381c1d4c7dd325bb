"""`mediflow dicom-node` against a real Orthanc (auto-routing by Lua), real dcmtk and real processes.

A chest film stored in Orthanc is routed to the node, which sends back exactly one PRELIMINARY SR
(and one Secondary Capture) into the same study, with the finding and probability the API gives
for the same bytes; what is not a frontal chest film gets nothing; the routing loop, re-sent films,
a killed node and a PACS that is down add nothing and lose nothing.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import REAL_224, environment_missing, xray_like
from dicom_factory import structured_report_bytes
from dicom_node_process import (
    NodeProcess,
    echoscu,
    film_dataset,
    missing_tools,
    sr_finding,
    store_rows,
    storescu,
    wait_for,
    worklist,
    write,
)
from orthanc_process import OrthancProcess, free_port

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive 3D SR
SETTLE_S = 8  # long enough for Orthanc's StableAge (1 s) plus a routing round trip through the node


@pytest.fixture(scope="module")
def tools() -> None:
    if (missing := missing_tools()):
        environment_missing(f"the DICOM node tests need {', '.join(missing)} "
                            "(apt-get install -y orthanc orthanc-dicomweb dcmtk dicom3tools)")


@pytest.fixture(scope="module")
def films() -> list[Path]:
    found = sorted((REAL_224 / "test_dev" / "PNEUMONIA").glob("*.jpeg"))[:6] + \
        sorted((REAL_224 / "test_dev" / "NORMAL").glob("*.jpeg"))[:6]
    if len(found) < 12:
        pytest.skip(f"real films not present under {REAL_224}/test_dev (a user's clone has no ../shared)")
    return found


@pytest.fixture(scope="module")
def pacs(tools, tmp_path_factory):
    """Orthanc routing every stable study to a node with --heatmap-sc on a SQLite store."""
    folder = tmp_path_factory.mktemp("pacs")
    node_port = free_port()
    orthanc = OrthancProcess(folder / "orthanc", node_port=node_port).start()
    node = NodeProcess(folder, f"sqlite:///{folder / 'node.db'}", send_to=orthanc.destination,
                       extra=["--heatmap-sc"], port=node_port)
    try:
        node.start()
    except RuntimeError:
        orthanc.stop()
        raise
    yield orthanc, node
    node.stop()
    orthanc.stop()


def _sr_count(orthanc: OrthancProcess, study_uid: str) -> int:
    return len(orthanc.qido_instances(study_uid, "SR"))


def _api_result(data: bytes) -> dict:
    from fastapi.testclient import TestClient

    from mediflow.serving.app import create_app
    from mediflow.serving.settings import Settings

    app = create_app(Settings(database_url=None, api_keys=None, api_keys_file=None))
    with TestClient(app) as client:
        r = client.post("/api/vision/analyze", files={"file": ("film.dcm", data, "application/dicom")})
    assert r.status_code == 200, r.text
    return r.json()


def test_echo_and_calling_ae_titles(pacs):
    _, node = pacs
    ok = echoscu(node.port, aet="TESTPACS")
    assert ok.returncode == 0, ok.stderr
    refused = echoscu(node.port, aet="INTRUDER")
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower()


def test_refused_calling_ae_stores_nothing(pacs, tmp_path):
    _, node = pacs
    synthetic = tmp_path / "film.png"
    xray_like(1, 7, 256).save(synthetic)  # never analysed: the association is refused first
    before = store_rows(node.database_url)["instances"]
    ds = film_dataset(synthetic)
    sent = storescu(node.port, [write(ds, tmp_path / "film.dcm")], aet="INTRUDER")
    assert sent.returncode != 0
    assert "reject" in (sent.stdout + sent.stderr).lower()
    assert store_rows(node.database_url)["instances"] == before  # nothing received, nothing recorded


@pytest.mark.realdata
def test_routed_chest_film_gets_one_sr_equal_to_the_api(pacs, films, tmp_path):
    orthanc, node = pacs
    ds = film_dataset(films[0], modality="CR", view="PA")
    path = write(ds, tmp_path / "cr.dcm")
    data = path.read_bytes()
    assert orthanc.upload(data).status_code == 200
    study = str(ds.StudyInstanceUID)
    wait_for(lambda: _sr_count(orthanc, study) >= 1, 90, what="the SR in Orthanc")
    time.sleep(SETTLE_S)  # the routing loop sends film + SR + SC back to the node: nothing more may come
    srs = orthanc.qido_instances(study, "SR")
    scs = orthanc.qido_instances(study, "OT")
    assert len(srs) == 1 and len(scs) == 1, (len(srs), len(scs))
    found = orthanc.instances(study)
    assert len(found) == 3  # film, SR, SC
    sr_id = next(i["ID"] for i in found if i["MainDicomTags"]["SOPInstanceUID"] == srs[0]["00080018"]["Value"][0])
    sc_id = next(i["ID"] for i in found if i["MainDicomTags"]["SOPInstanceUID"] == scs[0]["00080018"]["Value"][0])
    sr_bytes, sc_bytes = orthanc.file(sr_id), orthanc.file(sc_id)

    finding = sr_finding(sr_bytes)
    api = _api_result(data)
    assert finding["pneumonia"] == ("Present" if api["prediction"] == "PNEUMONIA" else "Absent")
    assert finding["probability"] == pytest.approx(api["probabilities"]["PNEUMONIA"], abs=1e-4)
    assert finding["needs_review"] == ("Yes" if api["needs_review"] else "No")
    assert "operating-point-centred" in finding["probability_name"]
    assert finding["preliminary"] == "PRELIMINARY"
    assert finding["study_uid"] == study and finding["series_uid"] != str(ds.SeriesInstanceUID)
    assert finding["source_uids"] == [str(ds.SOPInstanceUID)]
    for name, blob in (("sr", sr_bytes), ("sc", sc_bytes)):
        out = tmp_path / f"{name}.dcm"
        out.write_bytes(blob)
        check = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (name, errors)

    rows = store_rows(node.database_url)
    mine = [r for r in rows["instances"] if r["sop_instance_uid"] == str(ds.SOPInstanceUID)]
    assert len(mine) == 1 and mine[0]["state"] == "analysed" and mine[0]["no_bytes"]
    own = [r for r in rows["instances"] if r["sop_instance_uid"] in {finding["sop_uid"]}]
    assert own and own[0]["state"] == "refused" and own[0]["reason"].startswith("mediflow_output")

    # The worklist shows the DICOM study with what a reader needs to find it in the PACS.
    listed = [i for i in worklist(node.database_url) if i["accession_number"] == ds.AccessionNumber]
    assert len(listed) == 1
    assert (listed[0]["study_date"], listed[0]["modality"], listed[0]["prediction"], listed[0]["pacs_delivery"]) \
        == ("20261207", "CR", api["prediction"], "sent")


@pytest.mark.realdata
def test_what_is_not_a_frontal_chest_film_gets_nothing(pacs, films, tmp_path):
    orthanc, node = pacs
    ct = film_dataset(films[1], modality="CT", view=None, body_part=None)
    lateral = film_dataset(films[2], modality="DX", view="LL")
    pelvis = film_dataset(films[3], modality="CR", view="AP", body_part="PELVIS")
    for ds in (ct, lateral, pelvis):
        assert orthanc.upload(write(ds, tmp_path / "x.dcm").read_bytes()).status_code == 200
    sr = structured_report_bytes()
    assert orthanc.upload(sr).status_code == 200
    junk = tmp_path / "notes.dcm"
    junk.write_bytes(b"this is not a DICOM file, only text with a .dcm name\n" * 50)
    assert orthanc.upload(junk.read_bytes()).status_code == 400
    assert storescu(node.port, [junk]).returncode != 0  # storescu will not send it; nothing reached the node

    import io

    from pydicom import dcmread

    sr_uid = str(dcmread(io.BytesIO(sr)).SOPInstanceUID)
    expected = {str(ct.SOPInstanceUID): "not_chest_radiograph", str(lateral.SOPInstanceUID): "not_frontal_view",
                str(pelvis.SOPInstanceUID): "not_chest_radiograph", sr_uid: "not_an_image"}

    def refused():
        rows = {r["sop_instance_uid"]: r for r in store_rows(node.database_url)["instances"]}
        return rows if all(uid in rows for uid in expected) else None

    rows = wait_for(refused, 90, what="the node to record the four refusals")
    time.sleep(SETTLE_S)
    for uid, code in expected.items():
        assert rows[uid]["state"] == "refused" and rows[uid]["reason"].startswith(code), rows[uid]
        assert rows[uid]["no_bytes"] and rows[uid]["study_id"] is None
    refused_list = {r["sop_instance_uid"] for r in store_rows(node.database_url)["refused"]}
    assert set(expected) <= refused_list  # visible in the worklist's refused list
    for ds in (ct, lateral, pelvis):
        assert _sr_count(orthanc, str(ds.StudyInstanceUID)) == 0
        assert len(orthanc.instances(str(ds.StudyInstanceUID))) == 1


@pytest.mark.realdata
def test_film_sent_twice_and_routing_loop_add_nothing(pacs, films, tmp_path):
    orthanc, node = pacs
    ds = film_dataset(films[4], modality="DX", view="AP")
    path = write(ds, tmp_path / "dx.dcm")
    first = storescu(node.port, [path, path])  # twice in one association
    assert first.returncode == 0, first.stderr
    second = storescu(node.port, [path])  # and again in a second one
    assert second.returncode == 0, second.stderr
    study = str(ds.StudyInstanceUID)
    wait_for(lambda: _sr_count(orthanc, study) >= 1, 90, what="the SR in Orthanc")
    # Orthanc now holds SR + SC only; its routing sends them to the node: a second settle for that.
    time.sleep(2 * SETTLE_S)
    assert _sr_count(orthanc, study) == 1
    rows = store_rows(node.database_url)
    assert [r["state"] for r in rows["instances"] if r["sop_instance_uid"] == str(ds.SOPInstanceUID)] == ["analysed"]
    mine = [r for r in rows["results"] if r["state"] == "sent"]
    assert len({r["sop_instance_uid"] for r in mine}) == len(mine)  # no result object twice


@pytest.mark.realdata
def test_node_killed_after_reception_then_restarted_sends_each_sr_once(tools, films, tmp_path):
    node_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node_port, routing=None).start()
    node = NodeProcess(tmp_path, f"sqlite:///{tmp_path / 'node.db'}", send_to=orthanc.destination,
                       port=node_port)
    try:
        node.start()
        sets = [film_dataset(f, study_uid=None) for f in films[:4]]
        paths = [write(ds, tmp_path / f"f{i}.dcm") for i, ds in enumerate(sets)]
        assert storescu(node.port, paths).returncode == 0
        node.kill()  # at once: some films are only received, perhaps one is being analysed or sent
        states = [r["state"] for r in store_rows(node.database_url)["instances"]]
        assert len(states) == 4  # every answered C-STORE was durable before the answer
        node.start()
        for ds in sets:
            wait_for(lambda ds=ds: _sr_count(orthanc, str(ds.StudyInstanceUID)) >= 1, 120, what="each SR")
        time.sleep(3)
        assert [_sr_count(orthanc, str(ds.StudyInstanceUID)) for ds in sets] == [1, 1, 1, 1]
        rows = store_rows(node.database_url)
        assert rows["studies"] == 4
        assert sorted(r["state"] for r in rows["results"]) == ["sent"] * 4
    finally:
        node.stop()
        orthanc.stop()


@pytest.mark.realdata
def test_pacs_down_keeps_results_queued_through_a_restart_until_it_is_back(tools, films, tmp_path):
    node_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node_port, routing=None)
    node = NodeProcess(tmp_path, f"sqlite:///{tmp_path / 'node.db'}", send_to=orthanc.destination,
                       port=node_port)
    try:
        node.start()  # Orthanc is not running yet
        ds = film_dataset(films[5])
        assert storescu(node.port, [write(ds, tmp_path / "f.dcm")]).returncode == 0
        health = wait_for(lambda: (h := node.health())["status"] == "degraded" and h, 60,
                          what="/health to report the waiting result")
        assert health["results"].get("pending", 0) + health["results"].get("sending", 0) == 1
        assert "no association" in health["oldest_waiting_result"]["last_error"]
        assert "waiting for delivery" in node.log()
        assert [i["pacs_delivery"] for i in worklist(node.database_url)] == ["waiting"]
        node.kill()  # analysed, not yet sent: the SR must survive in the store
        node.start()
        orthanc.start()
        study = str(ds.StudyInstanceUID)
        wait_for(lambda: _sr_count(orthanc, study) >= 1, 60, what="the SR once Orthanc is back")
        time.sleep(4)
        assert _sr_count(orthanc, study) == 1
        assert wait_for(lambda: node.health()["status"] == "ok", 20, what="/health back to ok")
        assert [i["pacs_delivery"] for i in worklist(node.database_url)] == ["sent"]
    finally:
        node.stop()
        orthanc.stop()


@pytest.mark.realdata
def test_two_nodes_on_one_postgresql_analyse_each_film_once(tools, films, tmp_path):
    import os

    from db_fixtures import POSTGRES_ENV
    from dicom_node_process import PostgresDatabase

    base = os.environ.get(POSTGRES_ENV)
    if not base:
        environment_missing(f"this test needs {POSTGRES_ENV} (a PostgreSQL user allowed to CREATE DATABASE)")
    with PostgresDatabase(base) as url:
        node_port = free_port()
        orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node_port, routing=None).start()
        listening = NodeProcess(tmp_path, url, send_to=orthanc.destination, name="a", port=node_port)
        worker = NodeProcess(tmp_path, url, send_to=orthanc.destination, listen=False, name="b")
        try:
            listening.start()
            worker.start()
            sets = [film_dataset(f) for f in films]
            paths = [write(ds, tmp_path / f"f{i}.dcm") for i, ds in enumerate(sets)]
            assert storescu(listening.port, paths).returncode == 0
            for ds in sets:
                wait_for(lambda ds=ds: _sr_count(orthanc, str(ds.StudyInstanceUID)) >= 1, 180, what="each SR")
            time.sleep(3)
            assert [_sr_count(orthanc, str(ds.StudyInstanceUID)) for ds in sets] == [1] * len(sets)
            rows = store_rows(url)
            assert rows["studies"] == len(sets)  # one analysis per film
            assert all(r["attempts"] == 1 and r["state"] == "analysed" for r in rows["instances"])
            assert sorted(r["attempts"] for r in rows["results"]) == [1] * len(sets)
        finally:
            listening.stop()
            worker.stop()
            orthanc.stop()


@pytest.mark.realdata
def test_results_by_stow_rs_with_authorization(tools, films, tmp_path):
    import base64

    node_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node_port, routing=None,
                             http_users={"mediflow": "s3cret"}).start()
    good = "Basic " + base64.b64encode(b"mediflow:s3cret").decode()
    node = NodeProcess(tmp_path, f"sqlite:///{tmp_path / 'node.db'}", port=node_port, name="good",
                       extra=["--stow-url", orthanc.url + "/dicom-web", "--stow-auth-header", "PACS_AUTH"],
                       env={"PACS_AUTH": good})
    wrong = NodeProcess(tmp_path, f"sqlite:///{tmp_path / 'wrong.db'}", name="wrong",
                        extra=["--stow-url", orthanc.url + "/dicom-web", "--stow-auth-header", "PACS_AUTH"],
                        env={"PACS_AUTH": "Basic " + base64.b64encode(b"mediflow:guess").decode()})
    try:
        node.start()
        wrong.start()
        ds, other = film_dataset(films[6]), film_dataset(films[7])
        assert storescu(node.port, [write(ds, tmp_path / "f.dcm")]).returncode == 0
        assert storescu(wrong.port, [write(other, tmp_path / "g.dcm")]).returncode == 0
        wait_for(lambda: _sr_count(orthanc, str(ds.StudyInstanceUID)) >= 1, 60, what="the SR by STOW-RS")
        health = wait_for(lambda: (h := wrong.health())["status"] == "degraded" and h, 60,
                          what="the refused STOW-RS to show in /health")
        assert "HTTP 401" in health["oldest_waiting_result"]["last_error"]
        assert _sr_count(orthanc, str(other.StudyInstanceUID)) == 0
        assert "s3cret" not in node.log() and "guess" not in wrong.log()
    finally:
        node.stop()
        wrong.stop()
        orthanc.stop()


@pytest.mark.realdata
def test_recommended_instance_routing_sends_only_chest_films(tools, films, tmp_path):
    node_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node_port, routing="instance").start()
    node = NodeProcess(tmp_path, f"sqlite:///{tmp_path / 'node.db'}", send_to=orthanc.destination, port=node_port)
    try:
        node.start()
        film, ct = film_dataset(films[8]), film_dataset(films[9], modality="CT", view=None, body_part=None)
        paths = [write(film, tmp_path / "film.dcm"), write(ct, tmp_path / "ct.dcm")]
        assert storescu(orthanc.dicom_port, paths, aec="TESTPACS").returncode == 0
        study = str(film.StudyInstanceUID)
        wait_for(lambda: _sr_count(orthanc, study) >= 1, 60, what="the SR")
        time.sleep(4)
        assert _sr_count(orthanc, study) == 1
        uids = [r["sop_instance_uid"] for r in store_rows(node.database_url)["instances"]]
        assert uids == [str(film.SOPInstanceUID)]  # neither the CT nor the SR went to the node
    finally:
        node.stop()
        orthanc.stop()


def test_tls_only_node_refuses_plain_associations(tools, tmp_path):
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if made.returncode != 0:
        environment_missing("openssl could not make a test certificate")
    node = NodeProcess(tmp_path, f"sqlite:///{tmp_path / 'node.db'}",
                       extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        node.start()
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        client.check_hostname = False
        ae = AE(ae_title="TESTPACS")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 10
        secure = ae.associate("127.0.0.1", node.port, ae_title="MEDIFLOW", tls_args=(client, None))
        assert secure.is_established
        assert secure.send_c_echo().Status == 0x0000
        secure.release()
        assert echoscu(node.port).returncode != 0  # plain DICOM is not accepted
    finally:
        node.stop()
