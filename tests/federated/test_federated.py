"""Federated training (mediflow/federated): partitions, histogram statistics, DP accounting, and a
real Flower simulation on tiny data whose checkpoint `mediflow evaluate` loads."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from mediflow.data.dataset import _group_ids, scan_class_folders
from mediflow.decision import softmax
from mediflow.federated.partition import partition
from mediflow.federated.stats import dp_epsilon, fit_from_histograms, histogram_auc, margin_histograms
from mediflow.metrics import compute_metrics

NAMES = ["NORMAL", "PNEUMONIA"]


@pytest.mark.parametrize("how", ["patient", "label-skew", "framing"])
def test_partition_keeps_patients_together_and_covers_every_film(tiny_data: Path, how: str):
    samples = scan_class_folders(tiny_data / "train")
    sites = partition(samples, 3, how, seed=1)
    paths = [p for s in sites for p in s.paths]
    assert sorted(paths) == sorted(samples.paths)  # disjoint and complete
    groups = dict(zip(samples.paths, _group_ids(samples)))
    site_of_group = {}
    for i, s in enumerate(sites):
        for p in s.paths:
            assert site_of_group.setdefault(groups[p], i) == i  # a patient never spans two sites
    assert partition(samples, 3, how, seed=1)[0].paths == sites[0].paths  # same seed, same shards


def test_label_skew_differs_in_class_balance(tmp_path: Path):
    from conftest import make_dataset

    samples = scan_class_folders(make_dataset(tmp_path / "d", n_per_class=60) / "train")
    shares = [s.counts()["PNEUMONIA"] / len(s) for s in partition(samples, 3, "label-skew", seed=0)]
    iid = [s.counts()["PNEUMONIA"] / len(s) for s in partition(samples, 3, "patient", seed=0)]
    assert max(shares) - min(shares) > max(iid) - min(iid)


def test_label_skew_gives_every_site_each_class_it_has_patients_enough_for(tmp_path: Path):
    from conftest import make_dataset

    samples = scan_class_folders(make_dataset(tmp_path / "d", n_per_class=6) / "train")  # 3 patients a class
    for seed in range(20):
        for s in partition(samples, 3, "label-skew", seed=seed):
            assert min(s.counts().values()) > 0


def test_histogram_statistics_match_the_films_they_summarise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    logits = np.stack([np.zeros(400), rng.normal(2.0 * y - 1.0, 1.5)], axis=1)
    neg, pos = margin_histograms(logits, y, NAMES)
    assert sum(neg) == (y == 0).sum() and sum(pos) == (y == 1).sum() and len(neg) == 640
    exact = compute_metrics(y, softmax(logits), NAMES, threshold=0.5)["auc"]
    assert histogram_auc(neg, pos, NAMES) == pytest.approx(exact, abs=0.005)
    # Two sites' histograms add up to the pooled one.
    a = margin_histograms(logits[:150], y[:150], NAMES)
    b = margin_histograms(logits[150:], y[150:], NAMES)
    assert (np.add(a[0], b[0]).tolist(), np.add(a[1], b[1]).tolist()) == (neg, pos)
    fit = fit_from_histograms(neg, pos, NAMES, min_sensitivity=0.97)
    assert fit["val_metrics"]["sensitivity"] >= 0.97 and 0 < fit["threshold"] <= 1
    assert 0.05 < fit["temperature"] < 20


def test_dp_epsilon_shrinks_with_noise_and_grows_with_rounds():
    assert dp_epsilon(2.0, 5, 1e-5) < dp_epsilon(1.0, 5, 1e-5) < dp_epsilon(1.0, 20, 1e-5)
    assert dp_epsilon(0.0, 5, 1e-5) == float("inf")


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mediflow", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.mark.slow
def test_simulation_writes_a_checkpoint_evaluate_loads_and_only_weights_and_aggregates_left(
        tiny_data: Path, tmp_path: Path):
    out = tmp_path / "fed.pth"
    r = run_cli("federated", "simulate", "--data", str(tiny_data), "--sites", "2", "--rounds", "2",
                "--weights", "none", "--image-size", "64", "--partition", "label-skew", "--dp-noise", "0.5",
                "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    # The log: a line per round phase and per site, no colour codes and none of Ray's noise.
    log = r.stderr
    assert "\x1b[" not in log and "metrics exporter agent" not in log and "(raylet)" not in log
    for rnd in (1, 2):
        for phase in ("train", "evaluate"):
            assert f"round {rnd}/2 {phase}: sent to 2 sites" in log
            for site in (1, 2):
                assert re.search(rf"round {rnd}/2 {phase}: site {site} done \(\d of 2\)", log), (rnd, phase, site)
    from mediflow.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    fed = ckpt["federated"]
    assert fed["sites"] == 2 and fed["rounds"] == 2 and "2 sites" in ckpt["training_data"]
    assert fed["differential_privacy"]["epsilon"] == pytest.approx(dp_epsilon(0.5, 2, 1e-5))
    audit = json.loads(Path(str(out) + ".audit.json").read_text())
    train_keys = {"num-examples", "train-loss", "source-jpeg-quality"}
    eval_keys = {"num-examples", "val-loss", "hist-neg", "hist-pos"}
    assert len(audit["received"]) == 2 * 2 * 2  # 2 rounds x (train + evaluate) x 2 sites
    for rec in audit["received"]:
        assert "error" not in rec
        if rec["phase"] == "train":
            assert rec["records"] == ["arrays", "metrics"]
            assert set(rec["arrays"]) == {"head.weight", "head.bias"}  # the frozen recipe's head only
            assert set(rec["metrics"]) == train_keys
        else:
            assert rec["records"] == ["metrics"] and set(rec["metrics"]) == eval_keys
            assert rec["metrics"]["hist-neg"] == "list[640]"
    report = tmp_path / "report"
    r = run_cli("evaluate", "--model", str(out), "--data", str(tiny_data / "val"), "--out", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((report / "metrics.json").read_text())
    assert m["n"] == 8 and m["threshold"] == pytest.approx(ckpt["threshold"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, message", [
    (["server", "--sites", "2"], "either --insecure or all of"),
    (["server", "--sites", "2", "--insecure", "--supernode-key", "k.pub"], "needs TLS"),
    (["client", "--data", ".", "--server", "127.0.0.1:1"], "either --insecure or --root-certificates"),
    (["client", "--data", ".", "--server", "127.0.0.1:1", "--insecure", "--auth-key", "k"], "needs TLS"),
])
def test_deployed_commands_want_an_explicit_transport(argv, message):
    r = run_cli("federated", *argv, timeout=120)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_server_and_two_client_processes_on_loopback(tmp_path: Path):
    """A real Flower SuperLink (mediflow federated server) and two SuperNodes (mediflow federated
    client), each its own process, train 2 rounds; only the server writes the checkpoint, which
    `mediflow evaluate` loads, and the server received only parameters and aggregate metrics."""
    import os

    from conftest import make_dataset

    sites = [make_dataset(tmp_path / "site_a", n_per_class=12), make_dataset(tmp_path / "site_b", n_per_class=8)]
    out = tmp_path / "server" / "fed.pth"
    addr = f"127.0.0.1:{_free_port()}"
    py = [sys.executable, "-m", "mediflow", "federated"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the children run this checkout, wherever they start
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "client_a", "client_b")}
    procs = {"server": subprocess.Popen(
        py + ["server", "--sites", "2", "--rounds", "2", "--listen", addr, "--insecure", "--weights", "none",
              "--image-size", "64", "--round-timeout", "900", "--out", str(out)],
        stdout=logs["server"], stderr=subprocess.STDOUT, cwd=tmp_path, env=env)}
    try:
        deadline = time.monotonic() + 600
        while "waiting for 2 sites" not in (tmp_path / "server.log").read_text():
            assert procs["server"].poll() is None, (tmp_path / "server.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(1)
        for name, data in zip(("client_a", "client_b"), sites):
            procs[name] = subprocess.Popen(
                py + ["client", "--data", str(data), "--server", addr, "--insecure", "--max-wait-time", "600"],
                stdout=logs[name], stderr=subprocess.STDOUT, cwd=data, env=env)
        rc = procs["server"].wait(timeout=1500)
        server_log = (tmp_path / "server.log").read_text()
        assert rc == 0, server_log[-4000:] + (tmp_path / "client_a.log").read_text()[-3000:]
        for name in ("client_a", "client_b"):  # a site's client serves until stopped
            assert procs[name].poll() is None
            procs[name].terminate()
            assert procs[name].wait(timeout=60) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        for f in logs.values():
            f.close()
    # Only the server wrote a checkpoint; the sites' folders hold no model.
    assert out.is_file() and not any(p.suffix == ".pth" for s in sites for p in s.rglob("*"))

    from mediflow.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt["federated"]["sites"] == 2 and ckpt["federated"]["rounds"] == 2 and ckpt["federated"]["deployed"]
    audit = json.loads(Path(str(out) + ".audit.json").read_text())
    assert len(audit["received"]) == 2 * 2 * 2  # 2 rounds x (train + evaluate) x 2 sites
    head_bytes = (2 * 1280 + 2) * 4
    for rec in audit["received"]:
        assert "error" not in rec, rec
        if rec["phase"] == "train":
            assert rec["records"] == ["arrays", "metrics"] and rec["config_records"] == []
            assert rec["arrays"] == {"head.weight": {"shape": [2, 1280], "dtype": "float32"},
                                     "head.bias": {"shape": [2], "dtype": "float32"}}
            assert head_bytes <= rec["array_bytes"] < head_bytes + 1024
            assert set(rec["metrics"]) == {"num-examples", "train-loss", "source-jpeg-quality"}
        else:
            assert rec["records"] == ["metrics"] and rec["array_bytes"] == 0
            assert set(rec["metrics"]) == {"num-examples", "val-loss", "hist-neg", "hist-pos"}
    # Nothing that names a site's films or folders reached the server's process or its files.
    server_side = server_log + Path(str(out) + ".audit.json").read_text()
    for s in sites:
        assert str(s) not in server_side
        assert not any(p.name in server_side for p in s.rglob("*.jpeg"))
    report = tmp_path / "report"
    r = run_cli("evaluate", "--model", str(out), "--data", str(sites[0] / "val"), "--out", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((report / "metrics.json").read_text())["n"] == 8


def _tls_files(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and two SuperNode key pairs (NIST
    P-384, OpenSSH format as ssh-keygen -t ecdsa -b 384 writes them)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, key, issuer, issuer_key, ca: bool):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    ca_key, srv_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    files["ca"].write_bytes(cert("mediflow test CA", ca_key, "mediflow test CA", ca_key, True).public_bytes(pem))
    files["cert"].write_bytes(cert("127.0.0.1", srv_key, "mediflow test CA", ca_key, False).public_bytes(pem))
    files["key"].write_bytes(srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    for site in ("site_a", "intruder"):
        k = ec.generate_private_key(ec.SECP384R1())
        files[site] = d / f"{site}.key"
        files[site].write_bytes(k.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        files[site + ".pub"] = d / f"{site}.key.pub"
        files[site + ".pub"].write_bytes(k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                     serialization.PublicFormat.OpenSSH))
    return files


@pytest.mark.slow
def test_tls_and_supernode_authentication_admit_only_registered_sites(tmp_path: Path):
    """Over TLS with SuperNode authentication, a SuperNode whose key the server was not given is
    refused, and the registered one trains the federation to a checkpoint."""
    import os

    from conftest import make_dataset

    f = _tls_files(tmp_path / "pki")
    data = make_dataset(tmp_path / "site_a", n_per_class=8)
    out = tmp_path / "server" / "fed.pth"
    addr = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    py = [sys.executable, "-m", "mediflow", "federated"]
    logs = {n: tmp_path / f"{n}.log" for n in ("server", "intruder", "site_a")}
    procs = {"server": subprocess.Popen(
        py + ["server", "--sites", "1", "--rounds", "1", "--listen", addr, "--weights", "none", "--image-size", "64",
              "--ssl-certfile", str(f["cert"]), "--ssl-keyfile", str(f["key"]), "--ssl-ca-certfile", str(f["ca"]),
              "--supernode-key", str(f["site_a.pub"]), "--out", str(out)],
        stdout=logs["server"].open("w"), stderr=subprocess.STDOUT, cwd=tmp_path, env=env)}

    def client(name: str) -> subprocess.Popen:
        return subprocess.Popen(py + ["client", "--data", str(data), "--server", addr, "--root-certificates",
                                      str(f["ca"]), "--auth-key", str(f[name]), "--max-wait-time", "120"],
                                stdout=logs[name].open("w"), stderr=subprocess.STDOUT, cwd=data, env=env)
    try:
        deadline = time.monotonic() + 600
        while "waiting for 1 sites" not in logs["server"].read_text():
            assert procs["server"].poll() is None, logs["server"].read_text()[-4000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(1)
        assert "registered SuperNode" in logs["server"].read_text()
        procs["intruder"] = client("intruder")
        assert procs["intruder"].wait(timeout=600) != 0
        assert "No SuperNode found with the given public key" in logs["intruder"].read_text()  # Flower's refusal
        procs["site_a"] = client("site_a")
        rc = procs["server"].wait(timeout=1500)
        assert rc == 0, logs["server"].read_text()[-4000:] + logs["site_a"].read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(60)
    from mediflow.checkpoint import load_checkpoint

    assert load_checkpoint(out)["federated"]["sites"] == 1
    audit = json.loads(Path(str(out) + ".audit.json").read_text())
    assert [r["phase"] for r in audit["received"]] == ["train", "evaluate"]


def test_sites_survive_the_pickling_that_carries_the_client_app_to_ray():
    """Flower's simulation sends the ClientApp to its Ray actor with cloudpickle for every message;
    the site registry must be the actor's own (features computed once), not a copy made per message."""
    import cloudpickle

    from mediflow.federated import apps

    assert cloudpickle.loads(cloudpickle.dumps(apps.site_registry))() is apps._SITES


def test_log_filter_strips_colour_codes_and_drops_rays_complaints():
    from mediflow.logs import clean_line

    assert clean_line("\x1b[92mINFO \x1b[0m:      [ROUND 1/2]\n") == "INFO :      [ROUND 1/2]\n"
    assert clean_line("[2026-12-07 21:55:41,505 E 25038 25354] core_worker_process.cc:825: Failed to establish "
                      "connection to the metrics exporter agent. Metrics will not be exported.\n") is None
    assert clean_line("\x1b[33m(raylet)\x1b[0m [2026-12-07] main.cc:975: something\n") is None
    assert clean_line("21:57:23 INFO round 2/2 done in 1 s\n") == "21:57:23 INFO round 2/2 done in 1 s\n"
