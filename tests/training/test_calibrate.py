"""`mediflow calibrate` end to end on tiny data: temperature, bias and threshold refitted for a new
sensitivity floor on the model's own validation split; weights untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset

from mediflow.checkpoint import load_checkpoint
from mediflow.cli import main


def validation_logits(ckpt: dict, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The split the model was selected on, rebuilt here from the checkpoint's recorded settings and
    run through the network with the training-time eval transform."""
    from torch.utils.data import DataLoader

    from mediflow.data.dataset import ImageFolderDataset, grouped_split, resolve_split_dir, scan_class_folders
    from mediflow.inference.backends import TorchBackend
    from mediflow.preprocessing import PreprocessConfig, eval_transform

    split = ckpt["val_split"]
    _, val = grouped_split(scan_class_folders(resolve_split_dir(data, "train")), val_fraction=split["val_fraction"],
                           seed=split["seed"])
    assert val.file_list_sha256() == ckpt["val_file_list_sha256"]
    loader = DataLoader(ImageFolderDataset(val, eval_transform(PreprocessConfig.from_dict(ckpt["preprocessing"]))),
                        batch_size=64)
    backend = TorchBackend(ckpt)
    return np.concatenate([backend.run(x.numpy())["logits"] for x, _ in loader]), np.asarray(val.labels)


def calibrated_p(ckpt: dict, logits: np.ndarray) -> np.ndarray:
    """P(PNEUMONIA) = sigmoid((z1 - z0) / T + b1 - b0), written out rather than taken from decision.py."""
    b = ckpt["logit_bias"]
    logits = logits.astype(np.float64)
    z = (logits[:, 1] - logits[:, 0]) / ckpt["temperature"] + (b[1] - b[0])
    return 1 / (1 + np.exp(-z))


def nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


@pytest.mark.parametrize("floor", [1.0, 0.5])
def test_calibrate_refits_the_operating_point_without_touching_weights(tiny_model, tiny_data, tmp_path, floor):
    before = load_checkpoint(tiny_model)
    out = tmp_path / "recalibrated.pth"
    assert main(["calibrate", "--model", str(tiny_model), "--data", str(tiny_data), "--out", str(out),
                 "--min-sensitivity", str(floor)]) == 0
    after = load_checkpoint(out)
    assert load_checkpoint(tiny_model)["threshold"] == before["threshold"]  # --out: the input is left alone
    assert after["state_dict"].keys() == before["state_dict"].keys()
    assert all(torch.equal(after["state_dict"][k], before["state_dict"][k]) for k in before["state_dict"])
    assert after["train_config"]["min_sensitivity"] == floor and str(floor) in after["threshold_rule"]

    logits, y = validation_logits(after, tiny_data)
    p = calibrated_p(after, logits)
    t = after["threshold"]
    positives = p[y == 1]
    tol = 1e-9  # softmax there, a sigmoid here: the positive at the threshold may differ in the last bits
    # the refitted threshold meets the floor on the data it was fitted on ...
    assert (positives >= t - tol).mean() >= floor
    # ... and is the highest that does: the next positive score up would miss it
    higher = positives[positives > t + tol]
    if len(higher):
        assert (positives >= higher.min()).mean() < floor
    # the fitted temperature and bias can only lower the validation NLL they minimise
    z = logits.astype(np.float64)
    raw = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0])))
    assert nll(p, y) <= nll(np.clip(raw, 1e-12, 1 - 1e-12), y) + 1e-9
    # the stored validation metrics describe the new operating point
    assert after["val_metrics"]["threshold"] == t
    assert after["val_metrics"]["sensitivity"] == pytest.approx((positives >= t - tol).mean())


def test_calibrate_in_place_and_bad_input(tiny_model, tiny_data, tmp_path, capsys):
    model = tmp_path / "m.pth"
    shutil.copy(tiny_model, model)
    assert main(["calibrate", "--model", str(model), "--data", str(tiny_data), "--min-sensitivity", "0.5"]) == 0
    assert load_checkpoint(model)["train_config"]["min_sensitivity"] == 0.5
    capsys.readouterr()
    # another data set: not the split the model was selected on
    other = make_dataset(tmp_path / "other", n_per_class=9)
    assert main(["calibrate", "--model", str(model), "--data", str(other)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation split" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--model", str(model), "--data", str(tiny_data), "--min-sensitivity", "1.5"])
    assert exc.value.code == 2 and "min-sensitivity" in capsys.readouterr().err


def test_site_calibration_of_an_ensemble_refits_its_own_operating_point(tiny_model, tmp_path):
    """An ensemble takes the go-live step like a single model: its members' calibrations (which weigh
    them in the average) stay, and it gets a temperature, bias and threshold of its own, fitted on the
    site's films; the served call is that operating point."""
    from mediflow.checkpoint import save_checkpoint
    from mediflow.inference.predictor import Predictor

    member = load_checkpoint(tiny_model)
    ens_path = tmp_path / "ens.pth"
    save_checkpoint({"format": "mediflow-ensemble", "members": [member, member], "class_names": member["class_names"],
                     "architecture": "ensemble", "positive_class": "PNEUMONIA", "threshold": 0.5,
                     "temperature": 1.0, "preprocessing": member["preprocessing"]}, ens_path)
    site = make_dataset(tmp_path / "site", n_per_class=10) / "train"
    out = tmp_path / "ens_site.pth"
    assert main(["calibrate", "--model", str(ens_path), "--data", str(site), "--out", str(out),
                 "--min-sensitivity", "0.9"]) == 0
    after = load_checkpoint(out)
    assert after["site_calibration"]["n"] == 20 and "10 labelled films" not in after["threshold_rule"]
    assert [m["temperature"] for m in after["members"]] == [member["temperature"]] * 2
    p = Predictor.load(out, backend="torch")
    assert (p.temperature, p.threshold) == (after["temperature"], after["threshold"])
    paths = sorted(site.glob("*/*"))
    probs = p.probabilities_from_images([p.load_image(f).image for f in paths])
    is_pos = np.array([f.parent.name == "PNEUMONIA" for f in paths])
    # the fitted threshold keeps the floor on the site's films (scored here through the serving
    # path's numpy preprocessing, calibration's through torch's: equal up to float rounding), and the
    # served call is that rule
    assert (probs[is_pos, p.pos] >= after["threshold"] - 1e-5).mean() >= 0.9
    calls = [p.response(row, 0.0)["prediction"] == "PNEUMONIA" for row in probs]
    assert calls == list(probs[:, p.pos] >= after["threshold"])


# -- the input check after calibration -------------------------------------------------------------
def site_folder(root: Path, per_class: int) -> Path:
    """A site's labelled films: the first `per_class` test_dev films of each class, copied."""
    from conftest import REAL_224

    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for f in sorted((REAL_224 / "test_dev" / cls).glob("*.jpeg"))[:per_class]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.mark.realdata
@pytest.mark.parametrize("where", ["in-place", "--out"])
def test_an_adult_film_is_still_flagged_after_calibrate(tmp_path, where):
    """Calibration rewrites the checkpoint file but not the weights: the input check's statistics
    (fitted on those weights) must keep flagging adult films, whether the calibrated model replaces the
    original or is written elsewhere."""
    from conftest import REAL_224, SHARED_DATA

    from mediflow.inference.bundled import default_model_path
    from mediflow.inference.input_check import InputRejected, stats_path
    from mediflow.inference.input_check_fit import adult_halves
    from mediflow.inference.predictor import Predictor

    adult_dir = SHARED_DATA / "nih_adult"
    if not (REAL_224.is_dir() and adult_dir.is_dir()):
        pytest.skip(f"real data not present at {SHARED_DATA} (a user's clone has no ../shared)")
    bundled = default_model_path(None)
    model = tmp_path / "base" / "m.pth"
    model.parent.mkdir()
    shutil.copy(bundled, model)
    shutil.copy(stats_path(bundled), stats_path(model))
    out = model if where == "in-place" else tmp_path / "site" / "m_site.pth"
    args = ["calibrate", "--model", str(model), "--data", str(site_folder(tmp_path / "films", 12))]
    assert main(args + ([] if where == "in-place" else ["--out", str(out)])) == 0
    calibrated = load_checkpoint(out)
    assert calibrated["site_calibration"]["n"] == 24

    predictor = Predictor.load(out, backend="torch")
    assert predictor.input_check.uses_features
    assert predictor.model_card()["input_check"] == {"feature_checks": True, "problem": None,
                                                     "statistics_fitted_on": predictor.info.weights_sha256}
    assert predictor.info.weights_sha256 != predictor.info.sha256  # the file changed, the weights did not
    _, held, _ = adult_halves(adult_dir)
    flagged = 0
    for film in held[::50]:
        try:
            check = predictor.predict_bytes(film.read_bytes())["input_check"]
        except InputRejected as exc:
            check = exc.input_check
        flagged += any(r["code"] == "likely_adult" for r in check["reasons"])
        if any(r["code"] == "likely_adult" for r in check["reasons"]):
            assert check["status"] == "warning"
    assert flagged >= 0.9 * len(held[::50])


def test_a_model_without_statistics_says_so(tiny_model, caplog):
    """No statistics beside the model: a warning naming the command to run, and `/api/model`'s
    `input_check` says the feature checks are off and why."""
    import logging

    from mediflow.inference.predictor import Predictor

    with caplog.at_level(logging.WARNING, logger="mediflow.inference.input_check"):
        predictor = Predictor.load(tiny_model, backend="torch")
    assert not predictor.input_check.uses_features
    assert any("INPUT CHECK INCOMPLETE" in r.getMessage() and "mediflow fit-input-check" in r.getMessage()
               for r in caplog.records)
    card = predictor.model_card()["input_check"]
    assert card["feature_checks"] is False and "NOT flagged" in card["problem"]
