"""Fit the input check's statistics (inference/input_check.py) for one model.

- Pediatric reference: pooled features of films from the training part of the checkpoint's own
  patient-grouped split (never its validation part, never test_dev).
- Adult reference and classifier: one half of an adult chest-film folder (nih_adult: patients split
  in two by the NIH patient id in the file name; films of patients under 18 left out), the other half
  left for benchmarks/input_check.py to measure on.
- Each reference group is a Gaussian in its top-k principal subspace plus an isotropic residual
  (probabilistic PCA, Tipping & Bishop 1999). The warning distance is a high quantile of the
  distances of held-out films (those not used for the Gaussians: a within-sample quantile would
  be optimistic); rejection sits REJECT_FACTOR times further out.
- The adult classifier is an L2 logistic regression on standardised features; its threshold keeps
  (1 - PEDIATRIC_FLAG_RATE) of out-of-fold pediatric films unflagged.

`mediflow fit-input-check` runs this; features are cached per file so that a refit is quick.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mediflow.checkpoint import utc_now
from mediflow.errors import DatasetError
from mediflow.inference.backends import pooled_features
from mediflow.inference.input_check import InputCheckStats, Reference
from mediflow.inference.predictor import Predictor
from mediflow.inference.quantize import training_split

COMPONENTS = 32  # principal axes per reference group
WARN_QUANTILE = 0.995  # of held-out chest films' distances -> atypical_image above it
REJECT_FACTOR = 3.0  # not_chest_radiograph at this multiple of the warning distance
PEDIATRIC_FLAG_RATE = 0.01  # out-of-fold pediatric films the adult classifier may flag
ADULT_C = 0.05  # inverse L2 strength of the logistic regression (sklearn's C)
N_PEDIATRIC = 1600
SEED = 0
_NIH_PATIENT = re.compile(r"^(\d+)_\d+")


def nih_patient(path: str | Path) -> str:
    """NIH ChestX-ray14 file names are <patient id>_<follow-up>.png/jpeg; other names are their own group."""
    m = _NIH_PATIENT.match(Path(path).name)
    return m.group(1) if m else Path(path).name


def read_ages(folder: Path) -> dict[str, float]:
    """{relative file: age in years} from the folder's labels.csv (file, age_years columns), if any."""
    p = folder / "labels.csv"
    if not p.is_file():
        return {}
    with open(p, newline="", encoding="utf-8") as f:
        return {row["file"]: float(row["age_years"]) for row in csv.DictReader(f) if row.get("age_years")}


def adult_halves(folder: str | Path, *, seed: int = SEED) -> tuple[list[Path], list[Path], list[Path]]:
    """(fit half, held-out half, under-18 films) of an adult folder, split by patient; with no
    labels.csv every film counts as adult."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".dcm"))
    if not paths:
        raise DatasetError(f"{folder}: no adult films found")
    ages = read_ages(folder)
    minors = [p for p in paths if ages.get(p.relative_to(folder).as_posix(), 99) < 18]
    adults = [p for p in paths if p not in set(minors)]
    patients = sorted({nih_patient(p) for p in adults})
    rng = np.random.default_rng(seed)
    fit_patients = set(rng.permutation(patients)[: len(patients) // 2])
    return ([p for p in adults if nih_patient(p) in fit_patients], [p for p in adults if nih_patient(p) not in fit_patients],
            minors)


def pediatric_paths(predictor: Predictor, data: str | Path, n: int = N_PEDIATRIC, *, seed: int = SEED
                    ) -> tuple[list[Path], list[Path]]:
    """(the first n films (n <= N_PEDIATRIC) of a fixed random order of the checkpoint's training part,
    every film of its validation part). A fixed order, so a smaller n fits on a subset of the same films."""
    train, val = training_split(predictor.ckpt, data)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(train.paths), min(N_PEDIATRIC, len(train.paths)), replace=False)[:n]
    return [train.paths[i] for i in pick], list(val.paths)


class FeatureCache:
    """Pooled features per file path, kept in an .npz between runs (for one model, by SHA-256)."""

    def __init__(self, path: str | Path | None, model_sha256: str):
        self.path = Path(path) if path else None
        self.sha = model_sha256
        self.features: dict[str, np.ndarray] = {}
        if self.path and self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["model_sha256"]) == self.sha:
                    self.features = dict(zip((str(p) for p in z["paths"]), z["features"]))

    def save(self) -> None:
        if self.path and self.features:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(self.features)
            np.savez(self.path, model_sha256=np.array(self.sha), paths=np.array(keys),
                     features=np.stack([self.features[k] for k in keys]))


def extract_features(predictor: Predictor, paths: Sequence[Path], cache: FeatureCache | None = None, *,
                     batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, C) pooled features of image files, decoded and preprocessed as the server does."""
    todo = [p for p in paths if cache is None or str(p) not in cache.features]
    got: dict[str, np.ndarray] = {}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        x = np.stack([predictor.preprocess_array(predictor.load_image(p)) for p in chunk])
        for p, f in zip(chunk, pooled_features(predictor.backend.run(x, ("features",))["features"])):
            got[str(p)] = f
        if cache is not None:
            cache.features.update(got)
            if (i // batch_size) % 10 == 9:
                cache.save()
        if progress:
            progress(min(i + batch_size, len(todo)), len(todo))
    if cache is not None:
        cache.save()
    source = cache.features if cache is not None else got
    return np.stack([source[str(p)] for p in paths]).astype(np.float64)


def fit_reference(name: str, x: np.ndarray, k: int = COMPONENTS) -> Reference:
    """A probabilistic-PCA Gaussian of features x (N, C)."""
    mean = x.mean(axis=0)
    d = x - mean
    # Economy SVD: the top-k axes and their variances; the residual variance is the average of the
    # remaining eigenvalues (the PPCA maximum-likelihood noise variance).
    _, s, vt = np.linalg.svd(d, full_matrices=False)
    eig = s**2 / max(1, len(x) - 1)
    k = min(k, len(eig) - 1)
    rest = (np.sum(d * d) / max(1, len(x) - 1) - eig[:k].sum()) / (x.shape[1] - k)
    return Reference(name, mean, vt[:k], np.maximum(eig[:k], 1e-12), float(max(rest, 1e-12)))


def fit_adult_classifier(ped: np.ndarray, adult: np.ndarray, *, seed: int = SEED) -> tuple[np.ndarray, float, float]:
    """(weights (C,), bias, threshold) of P(adult) on raw features; the threshold from out-of-fold
    pediatric probabilities (5 folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.concatenate([ped, adult])
    y = np.r_[np.zeros(len(ped)), np.ones(len(adult))]

    def fit(xs, ys):
        mu, sd = xs.mean(axis=0), xs.std(axis=0) + 1e-6
        clf = LogisticRegression(C=ADULT_C, class_weight="balanced", max_iter=2000).fit((xs - mu) / sd, ys)
        w = clf.coef_[0] / sd
        return w, float(clf.intercept_[0] - np.dot(w, mu))

    oof = np.zeros(len(x))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        w, b = fit(x[tr], y[tr])
        oof[te] = 1 / (1 + np.exp(-(x[te] @ w + b)))
    threshold = float(np.quantile(oof[y == 0], 1 - PEDIATRIC_FLAG_RATE))
    w, b = fit(x, y)
    return w, b, threshold


def fit_stats(ped: np.ndarray, adult: np.ndarray, *, meta: dict[str, Any], seed: int = SEED) -> InputCheckStats:
    """Statistics from pediatric (N1, C) and adult (N2, C) pooled features."""
    rng = np.random.default_rng(seed)
    held = {}
    for name, x in (("pediatric", ped), ("adult", adult)):
        order = rng.permutation(len(x))
        cut = int(0.8 * len(x))
        held[name] = (x[order[:cut]], x[order[cut:]])
    # Distances of the held-out fifth of each group to Gaussians fitted on the other four fifths.
    refs80 = [fit_reference(n, held[n][0]) for n in ("pediatric", "adult")]
    heldout = np.concatenate([held["pediatric"][1], held["adult"][1]])
    dist = np.min(np.stack([r.distance(heldout) for r in refs80]), axis=0)
    warn = float(np.quantile(dist, WARN_QUANTILE))
    w, b, thr = fit_adult_classifier(ped, adult, seed=seed)
    refs = [fit_reference("pediatric", ped), fit_reference("adult", adult)]
    meta = {**meta, "created": utc_now(), "components": COMPONENTS, "warn_quantile": WARN_QUANTILE,
            "reject_factor": REJECT_FACTOR, "pediatric_flag_rate": PEDIATRIC_FLAG_RATE, "adult_c": ADULT_C,
            "heldout_distance_max": float(dist.max()), "n_pediatric": len(ped), "n_adult": len(adult)}
    return InputCheckStats(refs, w, b, thr, warn, warn * REJECT_FACTOR, meta)


def fit_for_model(predictor: Predictor, data: str | Path, adult_dir: str | Path, out: str | Path, *,
                  cache: str | Path | None = None, n_pediatric: int = N_PEDIATRIC, seed: int = SEED,
                  progress: Callable[[int, int], None] | None = None) -> InputCheckStats:
    """Extract features, fit, and write the statistics file `out`."""
    ped_paths, _ = pediatric_paths(predictor, data, n_pediatric, seed=seed)
    adult_fit, _, _ = adult_halves(adult_dir, seed=seed)
    fc = FeatureCache(cache, predictor.info.sha256)
    ped = extract_features(predictor, ped_paths, fc, progress=progress)
    adult = extract_features(predictor, adult_fit, fc, progress=progress)
    meta = {"model_sha256": predictor.info.sha256, "model_architecture": predictor.info.architecture,
            "pediatric_source": f"{len(ped_paths)} films of the training part of the checkpoint's split of {data} "
                                f"(seed {seed})",
            "adult_source": f"{len(adult_fit)} films of the fit half (by patient, seed {seed}) of {adult_dir}, age >= 18",
            "command": f"mediflow fit-input-check --data {data} --adult {adult_dir}"}
    stats = fit_stats(ped, adult, meta=meta, seed=seed)
    stats.save(out)
    return stats


def describe(stats: InputCheckStats) -> str:
    return json.dumps({"warn_distance": round(stats.warn_distance, 4), "reject_distance": round(stats.reject_distance, 4),
                       "adult_threshold": round(stats.adult_threshold, 4),
                       "heldout_distance_max": round(stats.meta.get("heldout_distance_max", float("nan")), 4)})
