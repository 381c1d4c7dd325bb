"""Quantization-aware distillation for the int8 export (training/quantization_aware.py) and the
films it and int8 calibration read (inference/quantize.py's serving_pixels)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import jpeg_bytes, xray_like

from mediflow.checkpoint import checkpoint_members, load_checkpoint
from mediflow.cli import main
from mediflow.data.images import decode_image
from mediflow.data.splits import checkpoint_split
from mediflow.errors import ImageDecodeError
from mediflow.inference.backends import OnnxBackend
from mediflow.inference.quantize import calibration_batches, quantize_int8, serving_pixels
from mediflow.preprocessing import PreprocessConfig, eval_array, harmonize, normalize_pixels
from mediflow.training.quantization_aware import OnnxGraphModule, centered, distill_for_int8, qdq_quantization


def _films(prep: PreprocessConfig, seeds: range) -> np.ndarray:
    """Serving pixels (N, S, S, 3) of synthetic films: distillation needs images, not labels."""
    return np.stack([np.asarray(harmonize(xray_like(s % 2, s, 96).convert("RGB"), prep)) for s in seeds])


@pytest.fixture(scope="module")
def tiny_int8(tiny_model: Path, tmp_path_factory) -> dict:
    """The tiny model's fp32 export, its post-training int8 model, and serving pixels of 256 films to
    distil on and 64 others to measure on."""
    folder = tmp_path_factory.mktemp("qat")
    pth = folder / "model.pth"
    shutil.copy(tiny_model, pth)
    assert main(["export", "--model", str(pth), "--onnx", str(folder / "model.onnx")]) == 0
    ckpt = load_checkpoint(pth)
    prep = PreprocessConfig.from_dict(checkpoint_members(ckpt)[0]["preprocessing"])
    train, _ = checkpoint_split(ckpt, ckpt["train_config"]["data"])
    films = serving_pixels(train.paths, prep)
    ptq = quantize_int8(folder / "model.onnx", folder / "ptq.onnx", calibration_batches(films, prep, 4))
    return {"folder": folder, "fp32": folder / "model.onnx", "ptq": ptq, "prep": prep,
            "temperature": float(ckpt["temperature"]), "train": _films(prep, range(1000, 1256)),
            "held_out": _films(prep, range(5000, 5064)), "films": films}


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return OnnxBackend(path).run(x)["logits"]


def test_graph_module_computes_the_fp32_export(tiny_int8):
    # Real film files, decoded and harmonised the way the server does.
    x = normalize_pixels(tiny_int8["films"], tiny_int8["prep"])
    with torch.no_grad():
        logits, features = OnnxGraphModule(tiny_int8["fp32"])(torch.from_numpy(x))
    ort = OnnxBackend(tiny_int8["fp32"]).run(x, ("logits", "features"))
    np.testing.assert_allclose(logits.numpy(), ort["logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(features.numpy(), ort["features"], rtol=0, atol=1e-4)


def test_fake_quantization_simulates_onnxruntime_int8(tiny_int8):
    """The simulated int8 model is much closer to ONNX Runtime's int8 model than fp32 is: it quantizes
    the same tensors with the same scales."""
    x = normalize_pixels(tiny_int8["held_out"], tiny_int8["prep"])
    acts, weights = qdq_quantization(tiny_int8["ptq"])
    assert "logits" in acts and "features" in acts and weights  # graph outputs get their fp32 names back
    with torch.no_grad():
        sim = OnnxGraphModule(tiny_int8["fp32"], (acts, weights))(torch.from_numpy(x), ("logits",))[0].numpy()
    z8, z32 = _logits(tiny_int8["ptq"], x), _logits(tiny_int8["fp32"], x)
    assert np.abs(z8 - z32).mean() > 1e-3  # int8 does differ from fp32 here
    assert np.abs(sim - z8).mean() < 0.5 * np.abs(z32 - z8).mean()


def test_distillation_brings_int8_closer_to_fp32_on_films_it_did_not_see(tiny_int8):
    """The distilled weights, quantized with the activation scales they were trained through, give
    int8 calibrated logits (centred: what softmax and the call depend on) closer to the fp32 model's
    than post-training quantization does, on other films: in the simulation and in ONNX Runtime."""
    folder, prep, t = tiny_int8["folder"], tiny_int8["prep"], tiny_int8["temperature"]
    quant = qdq_quantization(tiny_int8["ptq"])
    info = distill_for_int8(tiny_int8["fp32"], quant, tiny_int8["train"], folder / "student.onnx", prep,
                            temperature=t, steps=150, lr=1e-4)
    assert info["steps"] == 150 and info["training_images"] == len(tiny_int8["train"])
    assert info["logit_mse"]["last"] < info["logit_mse"]["first"]
    x = normalize_pixels(tiny_int8["held_out"], prep)

    def error(z: np.ndarray | torch.Tensor) -> float:
        return float((centered(torch.as_tensor(z), t) - z32).abs().mean())

    with torch.no_grad():
        z32 = centered(OnnxGraphModule(tiny_int8["fp32"])(torch.from_numpy(x), ("logits",))[0], t)
        sim_before = error(OnnxGraphModule(tiny_int8["fp32"], quant)(torch.from_numpy(x), ("logits",))[0])
        sim_after = error(OnnxGraphModule(folder / "student.onnx", quant)(torch.from_numpy(x), ("logits",))[0])
    assert sim_after < 0.8 * sim_before, (sim_before, sim_after)
    distilled = quantize_int8(tiny_int8["fp32"], folder / "distilled.int8.onnx",
                              [normalize_pixels(tiny_int8["train"], prep)],
                              weights_from=folder / "student.onnx", activations=quant[0])
    before, after = error(_logits(tiny_int8["ptq"], x)), error(_logits(distilled, x))
    assert after < 0.9 * before, (before, after)
    # The int8 model keeps the fp32 export's metadata (decision rule, source checkpoint).
    assert (OnnxBackend(distilled).metadata["source_checkpoint"]
            == OnnxBackend(tiny_int8["fp32"]).metadata["source_checkpoint"])


def test_export_records_the_distillation(tiny_model: Path, tmp_path: Path, capsys):
    pth = tmp_path / "model.pth"
    shutil.copy(tiny_model, pth)
    data = load_checkpoint(pth)["train_config"]["data"]
    assert main(["export", "--model", str(pth), "--int8", "--distill-steps", "4", "--data", data]) == 0
    assert "weights distilled through int8 for 4 batches" in capsys.readouterr().out
    q = OnnxBackend(pth.with_suffix(".int8.onnx")).metadata["onnx"]["quantization"]
    assert q["distillation"]["steps"] == 4 and "Jacob" in q["distillation"]["method"]
    assert main(["export", "--model", str(pth), "--int8", "--distill-steps", "-1", "--data", data]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--distill-steps" in err[0]


def test_serving_pixels_are_the_servers_model_input_in_order(tmp_path: Path):
    """What export-time calibration and int8 distillation feed the model: the server's decode
    (JPEG draft decode) and preprocessing, file by file, in the given order."""
    prep = PreprocessConfig(image_size=64, framing="trim", intensity="equalize")
    paths = []
    for i, size in enumerate((64, 96, 700, 300)):  # 700 px: decoded at a reduced scale, as uploads are
        p = tmp_path / f"film{i}.jpeg"
        p.write_bytes(jpeg_bytes(xray_like(i % 2, i, size)))
        paths.append(p)
    pixels = serving_pixels(paths, prep)
    assert pixels.shape == (4, 64, 64, 3) and pixels.dtype == np.uint8
    served = np.stack([eval_array(decode_image(p.read_bytes(), draft_size=64, keep_gray=True).image, prep)
                       for p in paths])
    assert np.array_equal(normalize_pixels(pixels, prep), served)
    assert np.array_equal(serving_pixels(paths[::-1], prep), pixels[::-1])
    (tmp_path / "broken.jpeg").write_bytes(b"\xff\xd8\xff not really")
    with pytest.raises(ImageDecodeError, match="broken.jpeg"):
        serving_pixels([paths[0], tmp_path / "broken.jpeg"], prep)
