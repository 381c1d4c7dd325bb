"""`mediflow serve` flags and errors, and `mediflow predict` output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, jpeg_bytes, png_bytes, xray_like

from mediflow.cli import build_parser, main
from mediflow.commands.serve import settings_from_args
from mediflow.errors import MediFlowError


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_serve_flags_become_settings(tmp_path):
    s = settings_from_args(serve_args("--model", "m.pth", "--host", "0.0.0.0", "--port", "9000",
                                      "--max-upload-mb", "0.5", "--review-below", "0.6",
                                      "--cors-origin", "https://a.example", "--cors-origin", "https://b.example"))
    assert (s.model_path, s.host, s.port) == ("m.pth", "0.0.0.0", 9000)
    assert s.max_upload_bytes == 512 * 1024 and s.review_below == 0.6
    assert s.cors_origins == ["https://a.example", "https://b.example"]


def test_serve_flags_override_environment(monkeypatch):
    monkeypatch.setenv("MEDIFLOW_PORT", "7000")
    monkeypatch.setenv("MEDIFLOW_REVIEW_BELOW", "0.9")
    s = settings_from_args(serve_args("--review-below", "0.5"))
    assert s.port == 7000 and s.review_below == 0.5


@pytest.mark.parametrize("argv", [["--cors-origin", "*"], ["--review-below", "1.5"], ["--max-upload-mb", "0"]])
def test_serve_refuses_bad_settings_in_one_line(argv):
    with pytest.raises(MediFlowError) as err:
        settings_from_args(serve_args(*argv))
    assert "\n" not in str(err.value) and str(err.value).startswith("invalid setting")


def test_serve_with_a_bad_model_path_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.pth"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "mediflow", "serve", "--model", str(missing), "--port", "0"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mediflow serve: error:") and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr


def test_serve_with_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    fake = tmp_path / "model.pth"
    fake.write_bytes(b"not a checkpoint")
    assert main(["serve", "--model", str(fake)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a loadable MediFlow checkpoint" in err[0]


def test_predict_prints_one_json_object_per_image(tiny_model, tmp_path, capsys):
    a, b = tmp_path / "a.jpeg", tmp_path / "b.png"
    a.write_bytes(jpeg_bytes(xray_like(1, 1, 96)))
    b.write_bytes(png_bytes(xray_like(0, 2, 96)))
    assert main(["predict", "--model", str(tiny_model), str(a), str(b)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    results = [json.loads(line) for line in lines]
    assert [r["file"] for r in results] == [str(a), str(b)]
    for r in results:
        assert r["prediction"] in ("NORMAL", "PNEUMONIA")
        assert r["confidence"] == r["probabilities"][r["prediction"]]
        assert r["disclaimer"] == "AI-assisted preliminary reading. Clinical correlation required."


def test_predict_reports_an_unreadable_image_and_goes_on(tiny_model, tmp_path, capsys):
    good, bad = tmp_path / "good.jpeg", tmp_path / "notes.jpeg"
    good.write_bytes(jpeg_bytes(xray_like(1, 1, 96)))
    bad.write_text("not an image")
    assert main(["predict", "--model", str(tiny_model), str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    first, second = (json.loads(line) for line in captured.out.strip().splitlines())
    assert first["file"] == str(bad) and "not a JPEG" in first["error"] and "prediction" not in first
    assert second["file"] == str(good) and "prediction" in second
    assert "error" in captured.err and "Traceback" not in captured.err
