"""The input check (mediflow/inference/input_check.py): what it refuses, flags and lets through, and
how every answer (API, study store, CLI) carries it. docs/input_check.md has the measured figures."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_224, SHARED_DATA, jpeg_bytes, png_bytes, xray_like
from db_fixtures import database_url, make_client, tiny_predictor  # noqa: F401  (fixtures)
from PIL import Image, ImageOps

from mediflow.data import input_corpus
from mediflow.data.decoded import DecodedImage
from mediflow.data.images import decode_image
from mediflow.inference.input_check import (
    InputCheckStats,
    InputRejected,
    Reason,
    age_years,
    header_reasons,
    pixel_reasons,
    stats_path,
    summarize,
)

ADULT = SHARED_DATA / "nih_adult"


def codes(reasons) -> set[str]:
    return {r.code if isinstance(r, Reason) else r["code"] for r in reasons}


def film(size: int = 256, seed: int = 0) -> Image.Image:
    """xray_like with film grain everywhere: its plain background would otherwise read as a border."""
    a = np.asarray(xray_like(0, seed, size=size), dtype=np.float64)
    a += np.random.default_rng(seed).normal(0, 12, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


# -- pixels and header, no model ------------------------------------------------------------------
@pytest.mark.parametrize("name,kind,data", list(input_corpus.blanks()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_generated_blank_is_rejected_before_the_model(name, kind, data):
    img = decode_image(data, keep_gray=True).image
    reasons = pixel_reasons(img, image_size=224, trims_borders=True)
    assert summarize(reasons)["status"] == "rejected" and codes(reasons) == {"blank_image"}, name


def test_a_two_level_picture_is_not_blank():
    a = np.zeros((200, 200), np.uint8)
    a[50:150, 60:140] = 255  # a fifth white, the rest black: structure, not a saturated window
    assert "blank_image" not in codes(pixel_reasons(Image.fromarray(a), image_size=224, trims_borders=True))


def test_a_film_passes_the_pixel_checks_and_colour_does_not():
    assert pixel_reasons(film(), image_size=224, trims_borders=True) == []
    rgb = np.asarray(film().convert("RGB")).copy()
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 90, 0, 255)  # a tinted photo of the same picture
    reasons = pixel_reasons(Image.fromarray(rgb), image_size=224, trims_borders=True)
    assert codes(reasons) == {"not_chest_radiograph"} and "colour" in reasons[0].message


def test_low_resolution_is_relative_to_the_model_input():
    assert codes(pixel_reasons(film(160), image_size=224, trims_borders=True)) == {"low_resolution"}
    assert pixel_reasons(film(160), image_size=128, trims_borders=True) == []


def test_a_film_in_a_wide_border_is_framed_a_note_saying_what_preprocessing_does():
    canvas = Image.new("L", (600, 600), 0)
    canvas.paste(film(300), (150, 150))
    note = pixel_reasons(canvas, image_size=224, trims_borders=True)
    assert [(r.code, r.severity) for r in note] == [("framed", "note")]
    assert summarize(note)["status"] == "ok" and "cuts uniform borders" in note[0].message
    other = pixel_reasons(canvas, image_size=224, trims_borders=False)
    assert [(r.code, r.severity) for r in other] == [("framed", "note")] and "cropping" in other[0].message


def test_the_decoders_window_fallback_flag_is_a_warning():
    decoded = DecodedImage(film(), "dicom")
    decoded.add_note("window fell back to percentiles", flag="window_fallback")
    reasons = pixel_reasons(decoded.image, image_size=224, trims_borders=True, flags=decoded.flags)
    assert summarize(reasons)["status"] == "warning" and codes(reasons) == {"window_fallback"}


@pytest.mark.parametrize("meta,expected", [
    ({"Modality": "CT"}, {"not_chest_radiograph"}),
    ({"Modality": "mr"}, {"not_chest_radiograph"}),
    ({"Modality": "DX", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2"}, {"not_chest_radiograph"}),  # mammography
    ({"Modality": "CR", "BodyPartExamined": "KNEE"}, {"not_chest_radiograph"}),
    ({"Modality": "DX", "BodyPartExamined": "CHEST", "PatientAge": "045Y"}, {"likely_adult"}),
    ({"Modality": "DX", "BodyPartExamined": "CHEST", "PatientAge": "004Y"}, set()),
    ({"Modality": "CR", "BodyPartExamined": "THORAX", "PatientAge": "018M"}, set()),
    ({"Modality": "OT", "BodyPartExamined": "Torax"}, set()),  # unknown values pass to the pixels
    (None, set()),
])
def test_dicom_header(meta, expected):
    assert codes(header_reasons(meta)) == expected


def test_age_strings():
    assert age_years("004Y") == 4 and age_years("018M") == 1.5 and age_years("bad") is None and age_years(None) is None


def test_summary_is_most_severe_first_and_rejection_names_it():
    check = summarize([Reason("low_resolution", "small.", "warning"), Reason("framed", "border.", "note"),
                       Reason("blank_image", "Blank.", "rejected")])
    assert check["status"] == "rejected" and [r["code"] for r in check["reasons"]] == \
        ["blank_image", "low_resolution", "framed"]
    assert str(InputRejected(check)) == "Not analysed: blank."


# -- the served path, with a real (tiny) model ----------------------------------------------------
def upload(client, data: bytes, name: str = "x.png"):
    return client.post("/api/vision/analyze", files={"file": (name, data, "application/octet-stream")})


def test_api_contract_ok_warning_and_rejected_with_the_refusal_kept_without_pixels(make_client, database_url):
    from sqlalchemy import inspect, select

    from mediflow.store.models import RefusedInput, StudyImage

    client = make_client(database_url=database_url, store_images=True)
    ok = upload(client, png_bytes(film(256)))
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["input_check"] == {"status": "ok", "reasons": []}

    small = upload(client, png_bytes(film(40)))  # under the tiny model's 64 px input
    assert small.status_code == 200
    s = small.json()
    assert s["input_check"]["status"] == "warning" and codes(s["input_check"]["reasons"]) == {"low_resolution"}
    assert s["needs_review"] is True and s["prediction"] in ("NORMAL", "PNEUMONIA")
    detail = client.get(f"/api/studies/{s['study_id']}").json()
    assert detail["input_check"] == s["input_check"] and detail["uncertain"] is True

    blank = png_bytes(Image.new("L", (300, 300), 255))
    r = upload(client, blank)
    assert r.status_code == 422
    refused = r.json()
    assert refused["input_check"]["status"] == "rejected"
    assert codes(refused["input_check"]["reasons"]) == {"blank_image"}
    assert refused["detail"].startswith("Not analysed:") and refused["detail"].count(". ") == 0
    assert "prediction" not in refused and "probabilities" not in refused
    listed = client.get("/api/studies/refused").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == refused["refusal_id"]
    assert listed["items"][0]["input_check"] == refused["input_check"]
    store = client.app.state.store
    with store.session() as sess:
        assert sess.scalars(select(RefusedInput)).one().source_format == "png"
        # --store-images keeps the analysed films, never a refused upload's pixels
        assert len(sess.scalars(select(StudyImage)).all()) == 2
    columns = {c["name"] for c in inspect(store.engine).get_columns("refused_inputs")}
    assert not columns & {"data", "image", "pixels"}
    # the worklist shows the two findings, not the refusal
    assert client.get("/api/studies", params={"status": "all"}).json()["total"] == 2


def test_a_ct_dicom_is_refused_by_its_header_whatever_its_pixels(make_client):
    client = make_client()
    arr = np.asarray(film(256))
    data = next(d for n, _, d in input_corpus.other_modality_dicoms(arr) if n == "film-as-ct.dcm")
    r = upload(client, data, "x.dcm")
    assert r.status_code == 422, r.text
    assert "Modality CT" in r.json()["detail"]


def test_cli_analyze_csv_carries_the_check(tmp_path, tiny_model):
    from mediflow.cli import main

    root = tmp_path / "films"
    root.mkdir()
    (root / "film.png").write_bytes(png_bytes(film(256)))
    (root / "small.png").write_bytes(png_bytes(film(40)))
    (root / "blank.png").write_bytes(png_bytes(Image.new("L", (300, 300), 0)))
    out = tmp_path / "r.csv"
    assert main(["analyze", str(root), "--out", str(out), "--model", str(tiny_model), "--no-progress"]) == 0
    rows = {r["file"]: r for r in csv.DictReader(open(out, newline=""))}
    assert rows["film.png"]["input_check"] == "ok" and rows["film.png"]["prediction"]
    assert (rows["small.png"]["input_check"] == "warning"
            and rows["small.png"]["input_check_reasons"] == "low_resolution")
    assert rows["small.png"]["needs_review"] == "True"
    assert rows["blank.png"]["input_check"] == "rejected" and rows["blank.png"]["prediction"] == ""
    assert rows["blank.png"]["input_check_reasons"] == "blank_image" and rows["blank.png"]["error"] == ""


def test_cli_predict_json_line_of_a_refused_image(tmp_path, tiny_model, capsys):
    from mediflow.cli import main

    blank = tmp_path / "blank.jpeg"
    blank.write_bytes(jpeg_bytes(Image.new("L", (300, 300), 128)))
    assert main(["predict", str(blank), "--model", str(tiny_model)]) == 1
    out = json.loads(capsys.readouterr().out.strip())
    assert out["input_check"]["status"] == "rejected" and "prediction" not in out


# -- the bundled model and its fitted statistics --------------------------------------------------
@pytest.fixture(scope="module")
def bundled():
    from mediflow.inference.predictor import Predictor

    p = Predictor.load()
    assert p.input_check.uses_features, (f"no input-check statistics beside the bundled model "
                                         f"({stats_path(p.info.path)})")
    return p


def verdict(predictor, data: bytes) -> dict:
    try:
        return predictor.predict_bytes(data)["input_check"]
    except InputRejected as exc:
        return exc.input_check


def test_bundled_statistics_match_the_bundled_model(bundled):
    stats = InputCheckStats.load(stats_path(bundled.info.path))
    assert stats.model_sha256 == bundled.info.weights_sha256  # keyed to the weights, which outlive recalibration
    assert 0 < stats.warn_distance < stats.reject_distance
    assert stats.reject_residual < 1 and stats.outlier_weights is not None and np.isfinite(stats.reject_outlier)


@pytest.mark.parametrize("kind", ["natural", "document", "ct_like", "mr_like", "ultrasound_like"])
def test_bundled_model_refuses_generated_non_radiographs(bundled, kind):
    gen = {"natural": input_corpus.natural_images, "document": lambda: input_corpus.documents(6),
           "ct_like": lambda: input_corpus.ct_like(4), "mr_like": lambda: input_corpus.mr_like(3),
           "ultrasound_like": lambda: input_corpus.ultrasound_like(3)}[kind]
    # Every natural image (grey variants of photographs are the hard ones); 12 of each other kind.
    items = list(gen()) if kind == "natural" else list(gen())[:12]
    passed = [name for name, _, data in items if verdict(bundled, data)["status"] != "rejected"]
    assert passed == [], f"not refused: {passed}"


@pytest.mark.parametrize("strip", [False, True], ids=["as-shipped", "identity-removed"])
def test_bundled_model_gives_no_finding_for_real_dicoms_of_other_modalities(bundled, strip):
    """pydicom's test files (real CT, MR, ultrasound, NM, RT dose, segmentations, secondary captures):
    refused, or not decodable (a 400), never a finding; with the Modality, SOP Class and body part
    removed only the pixels can refuse them."""
    from mediflow.errors import ImageDecodeError

    items = list(input_corpus.pydicom_test_files(strip_identity=strip))
    assert len(items) >= 40
    answered = []
    for name, _, data in items:
        try:
            if verdict(bundled, data)["status"] != "rejected":
                answered.append(name)
        except ImageDecodeError:
            pass
    assert answered == [], f"given a finding: {answered}"


@pytest.mark.realdata
def test_bundled_model_lets_pediatric_films_through_and_flags_adults(bundled):
    if not (REAL_224.is_dir() and ADULT.is_dir()):
        pytest.skip(f"real data not present at {SHARED_DATA} (a user's clone has no ../shared)")
    from mediflow.inference.input_check_fit import adult_halves

    kids = sorted((REAL_224 / "test_dev").rglob("*.jpeg"))[::10]
    kid_checks = [verdict(bundled, p.read_bytes()) for p in kids]
    assert sum(c["status"] == "rejected" for c in kid_checks) == 0
    assert sum(c["status"] != "ok" for c in kid_checks) <= max(1, len(kids) // 20)
    _, held, _ = adult_halves(ADULT)
    adults = held[::20]
    flagged = [c for c in (verdict(bundled, p.read_bytes()) for p in adults)
               if any(r["code"] == "likely_adult" for r in c["reasons"])]
    assert len(flagged) >= 0.9 * len(adults)
    assert all(c["status"] == "warning" for c in flagged)  # a warning, not a refusal


# -- the feature statistics, on synthetic features --------------------------------------------------
def synthetic_chest_features(n: int, seed: int, dims: int = 160, rank: int = 12) -> np.ndarray:
    """Non-negative rows (like pooled ReLU features) that lie close to one `rank`-dimensional subspace."""
    rng = np.random.default_rng(7)  # the same subspace for every call
    basis = np.abs(rng.normal(size=(rank, dims)))
    coef = np.abs(np.random.default_rng(seed).normal(size=(n, rank)))
    return coef @ basis + np.abs(np.random.default_rng(seed + 1).normal(0, 0.05, (n, dims)))


def synthetic_outliers(n: int, seed: int, dims: int = 160) -> np.ndarray:
    """Non-negative rows along other directions than the chest features'."""
    rng = np.random.default_rng(seed)
    basis = np.abs(np.random.default_rng(99).normal(size=(6, dims))) ** 3
    return np.abs(rng.normal(size=(n, 6))) @ basis + np.abs(rng.normal(0, 0.05, (n, dims)))


@pytest.fixture(scope="module")
def synthetic_stats():
    from mediflow.inference.input_check_fit import fit_stats

    outliers = synthetic_outliers(60, 4)
    return fit_stats(synthetic_chest_features(300, 1), synthetic_chest_features(120, 3) * 1.3,
                     meta={"model_sha256": "x"},
                     outliers=outliers, outlier_groups=[f"source{i // 6}" for i in range(len(outliers))])


def test_residual_rule_refuses_features_off_the_chest_subspace(synthetic_stats):
    """An input whose projection matches a chest film's but which has as much again off the principal
    axes: the k-NN distance (computed inside the projection) cannot see it, the residual does."""
    from mediflow.inference.input_check import InputCheck

    stats = synthetic_stats
    chest = synthetic_chest_features(1, 11)[0]
    off = np.abs(np.random.default_rng(5).normal(size=chest.shape))
    off -= stats.projection @ (stats.projection.T @ off)  # only what the projection drops
    odd = chest + off * (np.linalg.norm(chest) / np.linalg.norm(off))
    assert stats.distance(odd[None])[0] == pytest.approx(stats.distance(chest[None])[0], abs=1e-4)
    assert stats.distance(odd[None])[0] < stats.warn_distance
    assert stats.residual(chest[None])[0] < stats.reject_residual <= stats.residual(odd[None])[0]
    check = InputCheck(image_size=224, trims_borders=True, stats=stats)
    assert check.after(chest) == []
    assert codes(check.after(odd)) == {"not_chest_radiograph"}


def test_residual_threshold_is_the_largest_held_out_residual(synthetic_stats):
    assert 0 < synthetic_stats.reject_residual < 1
    assert synthetic_stats.meta["heldout_residual_max"] == pytest.approx(synthetic_stats.reject_residual)


def test_outlier_rule_refuses_new_pictures_like_the_auxiliary_ones_and_no_chest_film(synthetic_stats):
    from mediflow.inference.input_check import InputCheck

    stats = synthetic_stats
    assert stats.outlier_weights is not None and np.isfinite(stats.reject_outlier)
    new_outliers = synthetic_outliers(40, 12)  # not among the fitted ones
    new_chest = synthetic_chest_features(200, 21)
    assert np.all(stats.outlier_score(new_outliers) >= stats.reject_outlier)
    assert np.mean(stats.outlier_score(new_chest) >= stats.reject_outlier) <= 0.01
    check = InputCheck(image_size=224, trims_borders=True, stats=stats)
    assert codes(check.after(new_outliers[0])) == {"not_chest_radiograph"}
    # The threshold is the largest out-of-fold score of a chest film: no fitted film sits far above it.
    fitted = np.concatenate([synthetic_chest_features(300, 1), synthetic_chest_features(120, 3) * 1.3])
    assert np.mean(stats.outlier_score(fitted) >= stats.reject_outlier) <= 0.01


def test_statistics_round_trip_keeps_every_rule(synthetic_stats, tmp_path):
    loaded = InputCheckStats.load(synthetic_stats.save(tmp_path / "m.input_check.npz"))
    x = np.concatenate([synthetic_chest_features(20, 30), synthetic_outliers(20, 31)])
    np.testing.assert_allclose(loaded.outlier_score(x), synthetic_stats.outlier_score(x), rtol=1e-4, atol=1e-4)
    assert list(loaded.refuses(x)) == list(synthetic_stats.refuses(x))


def test_damaged_statistics_file_is_a_clear_error(synthetic_stats, tmp_path):
    from mediflow.errors import MediFlowError

    path = synthetic_stats.save(tmp_path / "m.input_check.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["scalars"] = arrays["scalars"][:3]
    np.savez_compressed(path, **arrays)
    with pytest.raises(MediFlowError, match="not a readable input-check file"):
        InputCheckStats.load(path)


def test_version_1_statistics_load_without_the_residual_rule(synthetic_stats, tmp_path):
    path = synthetic_stats.save(tmp_path / "m.input_check.npz")
    assert InputCheckStats.load(path).reject_residual == pytest.approx(synthetic_stats.reject_residual)
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "format_version": 1}))
    arrays["scalars"] = arrays["scalars"][:5]
    del arrays["outlier_weights"]
    np.savez_compressed(path, **arrays)
    old = InputCheckStats.load(path)
    assert old.reject_residual == float("inf") and old.reject_distance == pytest.approx(synthetic_stats.reject_distance)
    assert old.outlier_weights is None and np.all(old.outlier_score(synthetic_outliers(3, 40)) == -np.inf)


def test_fit_input_check_command_end_to_end(tmp_path, tiny_model):
    """`mediflow fit-input-check` on the tiny model: pediatric films from its own split, adult files
    named by NIH patient, the generated non-radiographs as auxiliary outliers; the file it writes is
    tied to the model and carries every rule."""
    import shutil

    from conftest import make_dataset

    from mediflow.checkpoint import file_sha256
    from mediflow.cli import main

    data = make_dataset(tmp_path / "data")
    adult = tmp_path / "adult"
    adult.mkdir()
    for i in range(12):
        img = xray_like(1, 1000 + i, size=160).resize((96, 96))
        (adult / f"{i:08d}_000.png").write_bytes(png_bytes(ImageOps.autocontrast(img)))
    model = tmp_path / "m.pth"
    shutil.copy(tiny_model, model)
    out = tmp_path / "m.input_check.npz"
    assert main(["fit-input-check", "--model", str(model), "--data", str(data), "--adult", str(adult),
                 "--out", str(out)]) == 0
    stats = InputCheckStats.load(out)
    assert stats.model_sha256 == file_sha256(model)
    assert 0 < stats.warn_distance <= stats.reject_distance and 0 < stats.reject_residual <= 1
    assert stats.outlier_weights is not None and np.isfinite(stats.reject_outlier)
    assert stats.meta["outlier"]["n_outliers"] > 50
