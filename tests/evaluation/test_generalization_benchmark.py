"""benchmarks/generalization.py and the invariance variants it applies.

The benchmark's figures are measured on real data by running it; these tests check that what it
counts is what it says: flips, |dP|, the split, the JSON a web page reads, and that each variant
hands over the film it documents.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_dataset, xray_like
from PIL import Image

from mediflow.decision import centred
from mediflow.evaluation import invariance as inv
from mediflow.inference.predictor import Predictor


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("generalization_benchmark", REPO / "benchmarks" / "generalization.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def film() -> Image.Image:
    """A non-square grayscale 'film' (200 x 160), so crops and resizes show which side is which."""
    return xray_like(1, seed=7, size=200).resize((200, 160), Image.Resampling.BILINEAR)


# -- the variants ---------------------------------------------------------------------------------

def test_dark_frame_is_a_1920x1080_screen_with_the_film_1000_px_high(film):
    out = inv.dark_frame(film)
    assert out.size == (1920, 1080)
    a = np.asarray(out)
    w = round(200 * 1000 / 160)
    x0 = (1920 - w) // 2
    assert a[0, 0] == 12 and a[1079, 1919] == 12 and a[20, 960] == 12  # the screen around the film
    assert a[40:1040, x0:x0 + w].mean() == pytest.approx(np.asarray(film).mean(), abs=2)


def test_pad_square_makes_a_4_to_3_film_inside_a_black_square(film):
    out = inv.pad_square(film)
    side = round(160 * 4 / 3)
    assert out.size == (side, side)
    a = np.asarray(out)
    top = (side - 160) // 2
    assert a[:top].max() == 0 and a[top + 160:].max() == 0
    assert a[top:top + 160].min() > 0


@pytest.mark.parametrize("fraction, size", [(0.06, (200 - 2 * 12, 160 - 2 * 10)), (0.12, (200 - 2 * 24, 160 - 2 * 19))])
def test_crop_cuts_the_fraction_off_each_border(film, fraction, size):
    out = inv.crop(fraction)(film)
    assert out.size == size
    dx, dy = (200 - size[0]) // 2, (160 - size[1]) // 2
    assert np.array_equal(np.asarray(out), np.asarray(film)[dy:dy + size[1], dx:dx + size[0]])


@pytest.mark.parametrize("g", [0.7, 1.4])
def test_gamma_maps_each_grey_level(film, g):
    a = np.asarray(film).astype(np.float64)
    expected = np.round(255 * (a / 255) ** g)
    assert np.array_equal(np.asarray(inv.gamma(g)(film)), expected)


def test_contrast_80_shrinks_the_spread_about_the_mean(film):
    a, b = np.asarray(film, dtype=np.float64), np.asarray(inv.contrast(0.8)(film), dtype=np.float64)
    assert b.std() == pytest.approx(0.8 * a.std(), rel=0.03)


def test_12bit_dicom_goes_through_the_dicom_decoder_and_comes_back_min_max_stretched(film, monkeypatch):
    import mediflow.data.images as images

    calls = []
    real = images.decode_dicom

    def spy(data, **kwargs):
        calls.append(data[128:132])
        return real(data, **kwargs)

    monkeypatch.setattr(images, "decode_dicom", spy)
    # A film that does not use the full grey range, so the stretch is visible.
    narrow = Image.fromarray((np.asarray(film, dtype=np.float64) * 0.5 + 60).round().astype(np.uint8))
    out = inv.VARIANTS["12-bit DICOM, min-max"](narrow)
    assert calls == [b"DICM"]
    a = np.asarray(narrow, dtype=np.float64)
    stretched = (a - a.min()) / (a.max() - a.min()) * 255
    got = np.asarray(out.convert("L"), dtype=np.float64)
    assert out.size == narrow.size
    assert np.abs(got - stretched).max() <= 1.0


def test_jpeg_q50_is_a_lossy_copy_of_the_same_size(film):
    data, name = inv.jpeg(50).encode(film)
    assert data[:3] == b"\xff\xd8\xff" and name.endswith(".jpeg")
    out = inv.VARIANTS["JPEG q50"](film)
    diff = np.abs(np.asarray(out.convert("L"), dtype=float) - np.asarray(film, dtype=float))
    assert out.size == film.size and 0 < diff.mean() < 5


def test_upscale_gives_the_long_side_and_keeps_the_aspect(film):
    out = inv.VARIANTS["upscaled to 2048 px"](film)
    assert out.size == (2048, round(160 * 2048 / 200))


def test_rotation_keeps_the_size_and_blackens_the_corners(film):
    for name in ("rotated +7 deg", "rotated -7 deg"):
        out = np.asarray(inv.VARIANTS[name](film))
        assert out.shape == (160, 200) and out[0, 0] == 0 and out[-1, -1] == 0


def test_hflip_mirrors(film):
    assert np.array_equal(np.asarray(inv.VARIANTS["horizontal flip"](film)), np.fliplr(np.asarray(film)))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_every_variant_takes_and_returns_a_pil_image(film, mode):
    for name, variant in inv.VARIANTS.items():
        out = variant(film.convert(mode))
        assert isinstance(out, Image.Image) and out.mode in ("L", "RGB"), name


# -- the statistics -------------------------------------------------------------------------------

def test_bootstrap_interval_brackets_the_auc(bench):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(110, bool), np.ones(190, bool)]
    s = rng.normal(size=300) + 1.2 * y
    lo, hi = bench.auc_ci_bootstrap(y, s)
    auc = roc_auc_score(y, s)
    assert lo < auc < hi and 0.02 < hi - lo < 0.2
    assert bench.auc_ci_bootstrap(y, y.astype(float)) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bench.auc_ci_bootstrap(np.ones(5, bool), np.arange(5.0))


def test_roc_is_thinned_with_both_ends_and_calibration_bins_cover_every_film(bench):
    rng = np.random.default_rng(2)
    y = rng.random(1000) < 0.6
    s = np.clip(rng.normal(0.5, 0.25, 1000) + 0.2 * y, 0, 1)
    roc = bench.roc_points(y, s)
    assert 100 < len(roc["fpr"]) <= 200 and len(roc["fpr"]) == len(roc["tpr"])
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0)
    bins = bench.calibration_bins(y, s)
    assert sum(b["n"] for b in bins) == 1000
    assert all(b["lo"] <= b["p_mean"] <= b["hi"] for b in bins)
    top = [b for b in bins if b["hi"] == 1.0][0]
    assert top["n"] == int((s >= 0.9).sum())


# -- flips and the whole run on the tiny model ----------------------------------------------------

def test_identity_gives_no_flips_and_a_constant_film_flips_what_it_should(bench, tiny_model):
    p = Predictor.load(tiny_model, backend="torch")
    films = [xray_like(i % 2, seed=100 + i, size=64) for i in range(10)]
    blank = Image.new("L", (64, 64), 0)
    base = p.probabilities_from_images(films)[:, p.pos]
    p_blank = float(p.probabilities_from_images([blank])[0, p.pos])
    far = int(np.argmax(np.abs(base - p_blank)))
    assert abs(base[far] - p_blank) > 1e-4, "the tiny model should score a blank frame unlike a film"
    # An operating point between the blank frame and the film farthest from it: that film must flip.
    p.rule = dataclasses.replace(p.rule, threshold=float((base[far] + p_blank) / 2))
    expected = int(((base >= p.threshold) != (p_blank >= p.threshold)).sum())
    expected_up = int(((base < p.threshold) & (p_blank >= p.threshold)).sum())
    with ThreadPoolExecutor(2) as pool:
        rows, overall = bench.invariance(p, films, pool, {"identity": lambda im: im.copy(),
                                                          "blank": lambda im: blank})
    ident, const = rows
    assert (ident["flips"], ident["max_abs_dp"], ident["n"]) == (0, 0.0, 10)
    assert const["flips"] == expected >= 1 and const["to_positive"] == expected_up
    assert const["flip_rate"] == pytest.approx(expected / 10)
    # |dP| on the reported (operating-point-centred) scale, as the benchmark reports it
    rep = centred(base, p.threshold) - centred(p_blank, p.threshold)
    assert const["mean_abs_dp"] == pytest.approx(np.abs(rep).mean(), abs=1e-3)
    assert const["max_abs_dp"] == pytest.approx(np.abs(rep).max(), abs=1e-3)
    assert overall == {"n": 20, "flips": expected, "flip_rate": expected / 20, "worst_variant": "blank",
                       "worst_flip_rate": expected / 10}


def test_the_benchmark_writes_the_documented_json_and_one_table(bench, tiny_model, tmp_path, capsys):
    # The tiny model was trained on make_dataset's files, so this copy reproduces its validation split.
    root = make_dataset(tmp_path / "data")
    (root / "val").rename(root / "test_dev")
    out = tmp_path / "gen.json"
    rc = bench.main(["--model", str(tiny_model), "--backend", "torch", "--data", str(root), "--json", str(out),
                     "--films", "5", "--quiet"])
    assert rc == 0
    r = json.loads(out.read_text())  # strict JSON: NaN would not parse in a browser
    assert set(r) >= {"model", "machine", "seconds", "validation", "test_dev", "thumbnail_baseline",
                      "invariance", "invariance_overall"}
    assert set(r["model"]) >= {"path", "sha256", "architecture", "backend"} and r["model"]["backend"] == "torch"
    assert isinstance(r["machine"], str) and r["seconds"] > 0
    assert r["validation"]["matches_checkpoint_split"] is True
    ckpt_val_n = Predictor.load(tiny_model, backend="torch").ckpt["val_split"]["n_val"]
    assert r["validation"]["n"] == ckpt_val_n
    t = r["test_dev"]
    assert set(t) >= {"n", "auc", "auc_ci95", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
                      "threshold", "confusion_matrix", "roc", "calibration"}
    assert t["n"] == 8 and sum(map(sum, t["confusion_matrix"])) == 8
    assert t["auc_ci95"][0] <= t["auc"] <= t["auc_ci95"][1]
    assert len(t["roc"]["fpr"]) == len(t["roc"]["tpr"]) <= 200
    assert sum(b["n"] for b in t["calibration"]["bins"]) == 8
    assert all(set(b) >= {"p_mean", "frac_positive", "n"} for b in t["calibration"]["bins"])
    assert set(r["thumbnail_baseline"]) >= {"validation_auc", "test_dev_auc"}
    assert [row["variant"] for row in r["invariance"]] == list(inv.VARIANTS)
    for row in r["invariance"]:
        assert set(row) >= {"variant", "n", "flips", "flip_rate", "mean_abs_dp", "max_abs_dp"}
        assert row["n"] == 5 and 0 <= row["flips"] <= 5
    o = r["invariance_overall"]
    assert set(o) >= {"n", "flips", "flip_rate", "worst_variant", "worst_flip_rate"}
    assert o["n"] == 5 * len(inv.VARIANTS) and o["flips"] == sum(row["flips"] for row in r["invariance"])
    table = capsys.readouterr().out
    assert table.startswith("machine: ")
    assert table.count("\n| ") == 1 + 6 + 1 + len(inv.VARIANTS) + 1  # header, 6 measures, floor, variants, all
    assert f"{t['auc']:.3f}" in table


def test_missing_data_is_one_line_and_exit_2(bench, tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "nowhere"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "train" in err


@pytest.mark.realdata
def test_validation_is_the_split_the_bundled_model_was_selected_on(real_data):
    """The benchmark rebuilds `mediflow train`'s split from the checkpoint's fraction and seed; on the
    real train folder that must give exactly the checkpoint's validation files."""
    from mediflow.data.dataset import grouped_split, scan_class_folders

    ckpt = Predictor.load(None).ckpt
    split = ckpt["val_split"]
    _, val = grouped_split(scan_class_folders(real_data / "train"), val_fraction=split["val_fraction"],
                           seed=split["seed"])
    assert len(val) == split["n_val"]
    assert val.file_list_sha256() == ckpt["val_file_list_sha256"]


def test_original_vs_copy_pairs_each_original_with_its_copy_and_scores_every_form(bench, tiny_model, tmp_path):
    """Originals (larger grayscale JPEGs) beside their copies under the same names; a name in two
    original folders counts once; an original without a copy is left out. Each form is the same film,
    so a copy made exactly as the model's preprocessing makes one gets the copy's call."""
    from mediflow.preprocessing import as_training_copy

    p = Predictor.load(tiny_model, backend="torch")
    copies, first, second = tmp_path / "copies", tmp_path / "fullres_a", tmp_path / "fullres_b"
    names = []
    for i in range(6):
        cls = "PNEUMONIA" if i % 2 else "NORMAL"
        big = xray_like(i % 2, seed=300 + i, size=256)
        for d in (first, second) if i == 0 else (first,):
            (d / cls).mkdir(parents=True, exist_ok=True)
            big.save(d / cls / f"film{i}.jpeg", quality=95)
        if i < 5:  # film5 has no copy
            (copies / cls).mkdir(parents=True, exist_ok=True)
            copy = as_training_copy(Image.open(first / cls / f"film{i}.jpeg").convert("L"),
                                    dataclasses.replace(p.prep, source_jpeg_quality=75))
            copy.save(copies / cls / f"film{i}.jpeg", quality=95)
            names.append(f"film{i}.jpeg")
    pairs = inv.original_copy_pairs([first, second, tmp_path / "absent"], copies)
    assert sorted(fp.original.name for fp in pairs) == sorted(names)
    assert all(fp.copy == copies / fp.label / fp.original.name and fp.original.parent.parent == first for fp in pairs)
    with ThreadPoolExecutor(2) as pool:
        rows = bench.original_vs_copy(p, pairs, pool)
    assert [r["form"] for r in rows] == ["224 px copy", *inv.ORIGINAL_FORMS]
    assert all(r["n"] == 5 and r["n_positive"] == 2 and 0 <= r["agree"] <= 1 for r in rows)
    assert rows[0]["agree"] == 1.0 and rows[0]["mean_abs_dp"] == 0.0
    assert len({r["copy_positive_rate"] for r in rows}) == 1
    # the PNG and DICOM forms carry the original's pixels losslessly (DICOM at 12 bits): same film
    png, _ = inv.png_bytes(Image.open(pairs[0].original).convert("L"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))),
                          np.asarray(Image.open(pairs[0].original).convert("L")))


def test_paired_auc_difference_is_zero_for_the_same_scores_and_signed_for_better_ones(bench):
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(60, bool), np.zeros(40, bool)]
    noisy = y + rng.normal(0, 1.0, 100)
    same = bench.paired_auc_difference(y, noisy, noisy, n_boot=300)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0], "p_not_better": 1.0}
    better = y + rng.normal(0, 0.3, 100)
    d = bench.paired_auc_difference(y, noisy, better, n_boot=300)
    from sklearn.metrics import roc_auc_score

    assert d["difference"] == pytest.approx(roc_auc_score(y, better) - roc_auc_score(y, noisy))
    assert 0 < d["ci95"][0] <= d["difference"] <= d["ci95"][1] and d["p_not_better"] < 0.05
    assert bench.paired_auc_difference(y, better, noisy, n_boot=300)["difference"] == pytest.approx(-d["difference"])
    with pytest.raises(ValueError):
        bench.paired_auc_difference(np.ones(5, bool), noisy[:5], better[:5])
