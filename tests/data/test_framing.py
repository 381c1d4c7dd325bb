"""Framing and intensity normalisation, the acquisition augmentation and the probe's head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import xray_like
from PIL import Image

from mediflow.preprocessing import (
    AugmentConfig,
    PreprocessConfig,
    RandomFraming,
    RandomGamma,
    content_box,
    eval_array,
    eval_transform,
    harmonize,
    train_transform,
)
from mediflow.training.probe import fit_linear_probe


def _film(seed: int, size: int) -> Image.Image:
    """A synthetic film with radiograph-like texture up to its edges (xray_like plus grain)."""
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 25, (size, size))
    return Image.fromarray(np.clip(np.asarray(xray_like(1, seed, size), float) + grain, 0, 255).astype(np.uint8))


def _framed(film: Image.Image, canvas: tuple[int, int], at: tuple[int, int], fill: int = 10) -> Image.Image:
    out = Image.new("L", canvas, fill)
    out.paste(film, at)
    return out


def test_content_box_finds_a_film_inside_a_flat_frame():
    film = _film(5, 300)
    framed = _framed(film, (960, 540), (400, 120))
    assert content_box(framed) == (400, 120, 700, 420)
    assert content_box(film) == (0, 0, 300, 300)  # nothing to trim


def test_content_box_leaves_flat_images_whole():
    assert content_box(Image.new("L", (200, 100), 128)) == (0, 0, 200, 100)
    # a thin textured strip: trimming would keep under MIN_KEEP of the width, so that side stays
    strip = _framed(xray_like(1, 2, 20).resize((10, 100)), (200, 100), (95, 0))
    left, upper, right, lower = content_box(strip)
    assert (left, right) == (0, 200)


@pytest.mark.parametrize("intensity", ["none", "equalize"])
def test_trimmed_framing_gives_the_model_the_same_film(intensity):
    cfg = PreprocessConfig(image_size=64, framing="trim", intensity=intensity)
    film = _film(9, 500)
    framed = _framed(film, (1920, 1080), (700, 300), fill=0)
    a, b = eval_array(film.convert("RGB"), cfg), eval_array(framed.convert("RGB"), cfg)
    assert np.abs(a - b).max() < 1e-5
    squash = PreprocessConfig(image_size=64)
    assert np.abs(eval_array(film.convert("RGB"), squash) - eval_array(framed.convert("RGB"), squash)).mean() > 0.1


def test_equalisation_removes_monotone_grey_level_changes():
    cfg = PreprocessConfig(image_size=64, intensity="equalize")
    film = xray_like(4, 1, 64).convert("RGB")
    lut = [round(255 * (v / 255) ** 1.4) for v in range(256)]  # a gamma that keeps levels distinct
    darker = film.point(lut * 3)
    plain = PreprocessConfig(image_size=64)
    changed = np.abs(eval_array(film, plain) - eval_array(darker, plain)).mean()
    kept = np.abs(eval_array(film, cfg) - eval_array(darker, cfg)).mean()
    assert kept < 0.1 * changed
    assert np.asarray(harmonize(film, cfg)).std() > 0  # still an image


def test_older_checkpoints_keep_the_design_preprocessing():
    cfg = PreprocessConfig.from_dict({"image_size": 64})
    assert (cfg.framing, cfg.intensity) == ("squash", "none")
    with pytest.raises(ValueError, match="framing"):
        harmonize(xray_like(0, 0, 32), PreprocessConfig(image_size=32, framing="zoom"))


def test_eval_array_matches_eval_transform_with_normalisation_on():
    cfg = PreprocessConfig(image_size=64, framing="trim", intensity="equalize")
    img = _framed(_film(5, 200), (400, 300), (100, 50)).convert("RGB")
    assert np.abs(eval_array(img, cfg) - eval_transform(cfg)(img).numpy()).max() < 1e-5


def test_random_framing_crops_in_and_zooms_out():
    torch.manual_seed(0)
    img = xray_like(1, 1, 100)
    sizes = {RandomFraming((0.5, 0.5), (1.0, 1.0))(img).size for _ in range(5)}
    assert sizes == {(50, 50)}
    out = RandomFraming((1.5, 1.5), (1.0, 1.0))(img)
    assert out.size == (150, 150)
    a = np.asarray(out)
    assert a.std() > 0 and (a == a[0, 0]).mean() > 0.4  # the film plus a flat margin


def test_random_gamma_is_monotone_and_bounded():
    torch.manual_seed(1)
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    out = np.asarray(RandomGamma((0.6, 1.6))(ramp))[0].astype(int)
    assert out[0] == 0 and out[-1] == 255 and np.all(np.diff(out) >= 0)


def test_acquisition_augmentation_runs_before_harmonize():
    names = [type(t).__name__ for t in train_transform(PreprocessConfig(image_size=64),
                                                       AugmentConfig.named("acquisition")).transforms]
    assert names.index("RandomFraming") < names.index("Harmonize")
    assert names.index("RandomJPEG") < names.index("Harmonize")
    x = train_transform(PreprocessConfig(image_size=64, framing="trim", intensity="equalize"),
                        AugmentConfig.named("acquisition"))(xray_like(2, 2, 90).convert("RGB"))
    assert tuple(x.shape) == (3, 64, 64)


def test_probe_head_on_raw_features_reproduces_the_standardised_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    views = [rng.normal(size=(300, 6)) * [1, 5, 0.1, 2, 3, 1] + [0, 10, -3, 1, 0, 2] + y[:, None] * [1, 0, 0.2, 0, 0, 0]
             for _ in range(2)]
    weight, bias = fit_linear_probe(views, y, c=0.1)
    x = np.concatenate(views)
    mean, std = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000).fit((x - mean) / std, np.tile(y, 2))
    logits = x @ weight.T + bias
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ref.decision_function((x - mean) / std), atol=1e-3)
    assert weight.shape == (2, 6) and bias.shape == (2,)
    with pytest.raises(ValueError):
        fit_linear_probe(views, np.zeros(300, dtype=int), c=0.1)
    with pytest.raises(ValueError):
        fit_linear_probe(views, y, c=0)


def test_probe_recipe_trains_with_normalised_preprocessing_and_site_calibration_refits(tmp_path, tiny_data):
    """`mediflow train --recipe probe` end to end (trim + equalise stored in the checkpoint, the head
    fitted by the probe), then `mediflow calibrate --data SITE_DIR` refits only the operating point."""
    from mediflow.checkpoint import load_checkpoint
    from mediflow.cli import main
    from mediflow.inference.predictor import Predictor

    out = tmp_path / "probe.pth"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--recipe", "probe", "--feature-views", "2",
                 "--weights", "none", "--image-size", "64", "--no-progress", "--seed", "1"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["preprocessing"]["framing"] == "trim" and ckpt["preprocessing"]["intensity"] == "equalize"
    assert ckpt["train_config"]["recipe"] == "probe" and len(ckpt["history"]) == 1
    assert Predictor.load(out, backend="torch").prep.intensity == "equalize"
    site = tmp_path / "site.pth"
    assert main(["calibrate", "--model", str(out), "--data", str(tiny_data / "val"), "--out", str(site),
                 "--min-sensitivity", "1.0"]) == 0
    refit = load_checkpoint(site)
    assert refit["site_calibration"]["n"] == 8 and refit["site_calibration"]["counts"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert "labelled films of the site" in refit["threshold_rule"]
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v, refit["state_dict"][k])  # weights unchanged
    # sensitivity 1.0 on the site's films at the refitted operating point
    p = Predictor.load(site, backend="torch")
    from mediflow.data.dataset import scan_class_folders
    films = scan_class_folders(tiny_data / "val")
    calls = p.decide(p.probabilities_from_images([p.load_image(f).image for f in films.paths]))
    assert all(c == p.pos for c, y in zip(calls, films.labels) if films.class_names[y] == "PNEUMONIA")
