"""Fit the input check's statistics (inference/input_check.py) for one model.

- Pediatric films: pooled features of films from the training part of the checkpoint's own
  patient-grouped split (never its validation part, never test_dev).
- Adult films: one half of an adult chest-film folder (nih_adult: patients split in two by the NIH
  patient id in the file name; films of patients under 18 left out), the other half left for
  benchmarks/input_check.py to measure on.
- Distance from chest films: both groups form the bank of a k-nearest-neighbour cosine distance
  (Sun et al., ICML 2022) in the features' top DIMS principal axes. Thresholds come from films left
  out of the bank (5 folds): `atypical_image` above the WARN_QUANTILE quantile of their distances,
  `not_chest_radiograph` beyond the largest (x REJECT_FACTOR). The residual off those axes (Wang et
  al., CVPR 2022) rejects beyond the largest of the same left-out films' residuals (x REJECT_FACTOR).
- Outlier score (Outlier Exposure, Hendrycks et al., ICLR 2019): an L2 logistic regression of chest
  films (both groups, their re-encoded copies, and the pediatric films as another site may present
  them: the training augmentation `acquisition`) against auxiliary non-radiographs, the generated
  corpus of data/input_corpus.py that the header and pixel checks let through. It rejects at or
  above the largest out-of-fold score of a chest film (folds by film and by source picture), so no
  held-out chest film would have been refused. The distance and residual thresholds use no
  non-radiograph.
- The adult classifier is an L2 logistic regression on standardised features, fitted on each film as
  it is and re-encoded the way the other group's files are (format_variant), so that file size and
  JPEG texture do not tell children from adults (the re-encoded copies join the distance's bank too);
  likely_adult at P(adult) >= 0.5, the balanced classifier's own decision point.

`mediflow fit-input-check` runs this; features are cached per file so that a refit is quick.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The fit needs the train extra (scikit-learn for its classifiers, torch for the acquisition
# augmentation, matplotlib for the generated outliers). Imported here, unused at module level, so that
# on the core install `mediflow fit-input-check` stops at once naming the extra (mediflow/cli.py),
# not after minutes of feature extraction.
import matplotlib  # noqa: F401
import numpy as np
import sklearn  # noqa: F401
import torch  # noqa: F401

from mediflow.checkpoint import utc_now
from mediflow.data.splits import checkpoint_split
from mediflow.errors import DatasetError
from mediflow.inference.backends import pooled_features
from mediflow.inference.input_check import InputCheckStats, knn_distance, projected_unit_rows, subspace_residual
from mediflow.inference.predictor import Predictor

K = 10  # the k-th nearest neighbour's distance (Sun et al. 2022 use k = 50 of a far larger bank)
DIMS = 64  # principal axes the features are projected on
WARN_QUANTILE = 0.995  # of held-out chest films' distances -> atypical_image above it
REJECT_FACTOR = 1.0  # not_chest_radiograph beyond this multiple of the largest held-out distance
# P(adult) at which likely_adult is raised: the balanced classifier's own decision point (equal priors).
ADULT_THRESHOLD = 0.5
ADULT_C = 0.05  # inverse L2 strength of the logistic regression (sklearn's C)
OUTLIER_C = 0.01  # ... of the outlier classifier (strong: a few hundred auxiliary pictures)
FOLDS = 5
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
    return ([p for p in adults if nih_patient(p) in fit_patients],
            [p for p in adults if nih_patient(p) not in fit_patients], minors)


def pediatric_paths(predictor: Predictor, data: str | Path, n: int = N_PEDIATRIC, *, seed: int = SEED
                    ) -> tuple[list[Path], list[Path]]:
    """(the first n films (n <= N_PEDIATRIC) of a fixed random order of the checkpoint's training part,
    every film of its validation part). A fixed order, so a smaller n fits on a subset of the same films."""
    train, val = checkpoint_split(predictor.ckpt, data)
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
        x = np.stack([predictor.preprocess_array(predictor.load_image(p).image) for p in chunk])
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


def principal_axes(bank: np.ndarray, dims: int = DIMS) -> np.ndarray:
    """(C, dims): the top right-singular vectors of the (uncentred) bank, the directions cosine
    similarity between films depends on most."""
    _, _, vt = np.linalg.svd(bank, full_matrices=False)
    return vt[:dims].T.copy()


def standardized_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """(weights, bias) of a balanced L2 logistic regression (sklearn's C = `c`) fitted on the columns
    of x standardised, with the standardisation folded in: logit = x @ weights + bias on raw x."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit((x - mu) / sd, y)
    w = clf.coef_[0] / sd
    return w, float(clf.intercept_[0] - np.dot(w, mu))


def fit_adult_classifier(ped: np.ndarray, adult: np.ndarray, *, seed: int = SEED
                         ) -> tuple[np.ndarray, float, float, float]:
    """(weights (C,), bias) of P(adult) on raw features, and the out-of-fold (5 folds) share of
    pediatric and of adult films at or above ADULT_THRESHOLD."""
    from sklearn.model_selection import StratifiedKFold

    x = np.concatenate([ped, adult])
    y = np.r_[np.zeros(len(ped)), np.ones(len(adult))]

    def fit(xs, ys):
        return standardized_logistic(xs, ys, ADULT_C)

    oof = np.zeros(len(x))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        w, b = fit(x[tr], y[tr])
        oof[te] = 1 / (1 + np.exp(-(x[te] @ w + b)))
    w, b = fit(x, y)
    # Out-of-fold rates at the threshold, for the record (meta), not to choose it.
    return w, b, float(np.mean(oof[y == 0] >= ADULT_THRESHOLD)), float(np.mean(oof[y == 1] >= ADULT_THRESHOLD))


def fit_outlier_classifier(chest: np.ndarray, chest_groups: np.ndarray, outliers: np.ndarray,
                           outlier_groups: np.ndarray, *, seed: int = SEED) -> tuple[np.ndarray, float, float, dict]:
    """(weights (C,) on L2-normalised features, bias, rejection threshold, record) of a logistic
    regression of chest films (label 0) against auxiliary non-radiographs (label 1), balanced classes.
    The threshold is the largest out-of-fold logit of a chest film: folds keep each group (a film with
    its copies, a source picture with its variants) together."""
    x = np.concatenate([chest, outliers]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    y = np.r_[np.zeros(len(chest)), np.ones(len(outliers))]
    _, groups = np.unique(np.r_[[f"c{g}" for g in chest_groups], [f"o{g}" for g in outlier_groups]],
                          return_inverse=True)
    fold_of_group = np.random.default_rng(seed).permutation(groups.max() + 1) % FOLDS

    def fit(xs, ys):
        return standardized_logistic(xs, ys, OUTLIER_C)

    oof = np.zeros(len(x))
    for f in range(FOLDS):
        test = fold_of_group[groups] == f
        w, b = fit(x[~test], y[~test])
        oof[test] = x[test] @ w + b
    threshold = float(oof[y == 0].max())
    w, b = fit(x, y)
    record = {"outlier_c": OUTLIER_C, "n_chest": int(len(chest)), "n_outliers": int(len(outliers)),
              "oof_outliers_refused": float(np.mean(oof[y == 1] >= threshold))}
    return w, b, threshold, record


def fit_stats(ped: np.ndarray, adult: np.ndarray, *, meta: dict[str, Any], seed: int = SEED,
              ped_other_format: np.ndarray | None = None, adult_other_format: np.ndarray | None = None,
              ped_acquired: np.ndarray | None = None, outliers: np.ndarray | None = None,
              outlier_groups: Sequence[str] | None = None) -> InputCheckStats:
    """Statistics from pediatric (N1, C) and adult (N2, C) pooled features. `*_other_format`: the
    same films re-encoded the way the other group's files are (see format_variant), so that the adult
    classifier cannot tell the groups apart by file size and JPEG texture (they join the distance's
    bank too). `ped_acquired` (N1, C): the pediatric films as another site may present them
    (extract_acquired_features); `outliers` (M, C): auxiliary non-radiographs, `outlier_groups` (M,) their
    source pictures; both for the outlier classifier only, which is left out without `outliers`."""
    rng = np.random.default_rng(seed)
    parts = [ped, adult] + [v for v in (ped_other_format, adult_other_format) if v is not None]
    bank = np.concatenate(parts)
    # Film ids: a film and its re-encoded copy are one group.
    films = np.r_[np.arange(len(ped)), len(ped) + np.arange(len(adult))]
    if ped_other_format is not None:
        films = np.r_[films, np.arange(len(ped))]
    if adult_other_format is not None:
        films = np.r_[films, len(ped) + np.arange(len(adult))]
    # Thresholds from films left out of the bank (5 folds, each film with its copy): a film's
    # distance to a bank that holds the film itself would be 0.
    folds = np.array_split(rng.permutation(len(ped) + len(adult)), 5)
    held, held_residual = [], []
    for fold in folds:
        out = np.isin(films, fold)
        rest = bank[~out]
        axes = principal_axes(rest)
        held.append(knn_distance(bank[out], axes, projected_unit_rows(rest, axes), K))
        held_residual.append(subspace_residual(bank[out], axes))
    dist, residual = np.concatenate(held), np.concatenate(held_residual)
    warn, reject = float(np.quantile(dist, WARN_QUANTILE)), float(dist.max() * REJECT_FACTOR)
    reject_residual = float(residual.max() * REJECT_FACTOR)
    p_all = ped if ped_other_format is None else np.concatenate([ped, ped_other_format])
    a_all = adult if adult_other_format is None else np.concatenate([adult, adult_other_format])
    w, b, oof_ped, oof_adult = fit_adult_classifier(p_all, a_all, seed=seed)
    outlier: tuple[np.ndarray | None, float, float] = (None, 0.0, float("inf"))
    if outliers is not None and len(outliers):
        chest = np.concatenate([bank] + ([ped_acquired] if ped_acquired is not None else []))
        chest_groups = np.r_[films, np.arange(len(ped))] if ped_acquired is not None else films
        groups = np.asarray(outlier_groups if outlier_groups is not None else np.arange(len(outliers)))
        w_out, b_out, reject_outlier, record = fit_outlier_classifier(chest, chest_groups, outliers, groups, seed=seed)
        outlier = (w_out, b_out, reject_outlier)
        meta = {**meta, "outlier": record}
    proj = principal_axes(bank)
    rows = projected_unit_rows(bank, proj)
    meta = {**meta, "created": utc_now(), "k": K, "dims": DIMS, "warn_quantile": WARN_QUANTILE,
            "reject": f"{REJECT_FACTOR} x the largest held-out chest film distance",
            "adult_c": ADULT_C, "oof_pediatric_flagged": oof_ped, "oof_adult_flagged": oof_adult,
            "heldout_distance_max": float(dist.max()), "heldout_residual_max": float(residual.max()),
            "reject_residual": f"{REJECT_FACTOR} x the largest held-out chest film residual",
            "n_pediatric": len(ped), "n_adult": len(adult),
            "format_balanced": ped_other_format is not None,
            "reject_outlier": "the largest out-of-fold outlier score of a chest film"}
    return InputCheckStats(proj.astype(np.float32), rows.astype(np.float16), K, w, b, ADULT_THRESHOLD, warn, reject,
                           meta, reject_residual, *outlier)


def format_variant(path: Path, kind: str) -> bytes:
    """A film re-encoded as the other group's files are: 'up' (a 224 px pediatric copy upscaled to
    448 px, JPEG quality 90, as the adult files are larger, cleaner JPEGs) or 'small' (an adult film
    squashed to 224 x 224, JPEG quality 75, as the Kermany copies were made)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
        if kind == "up":
            out, q = im.resize((448, 448), Image.Resampling.LANCZOS), 90
        else:
            out, q = im.resize((224, 224), Image.Resampling.BILINEAR), 75
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def extract_keyed_features(predictor: Predictor, items: Sequence[tuple[str, Callable[[], np.ndarray]]],
                           cache: FeatureCache | None, batch_size: int = 32) -> np.ndarray:
    """(N, C) pooled features of (cache key, function giving the preprocessed (3, S, S) input) items;
    only the items not in `cache` are computed."""
    todo = [(key, make) for key, make in items if cache is None or key not in cache.features]
    got: dict[str, np.ndarray] = {}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        x = np.stack([make() for _, make in chunk])
        got.update(zip((key for key, _ in chunk), pooled_features(predictor.backend.run(x, ("features",))["features"])))
        if cache is not None and (i // batch_size) % 10 == 9:
            cache.features.update(got)
            cache.save()
    if cache is not None:
        cache.features.update(got)
        cache.save()
    source = cache.features if cache is not None else got
    return np.stack([source[key] for key, _ in items]).astype(np.float64)


def extract_variant_features(predictor: Predictor, paths: Sequence[Path], kind: str, cache: FeatureCache | None,
                             batch_size: int = 32) -> np.ndarray:
    """Features of each film re-encoded by format_variant(path, kind)."""
    from mediflow.data.images import decode_image

    def maker(p: Path) -> Callable[[], np.ndarray]:
        return lambda: predictor.preprocess_array(
            decode_image(format_variant(p, kind), draft_size=predictor.draft_size).image)

    return extract_keyed_features(predictor, [(f"{p}#{kind}", maker(p)) for p in paths], cache, batch_size)


def extract_acquired_features(predictor: Predictor, paths: Sequence[Path], cache: FeatureCache | None, *,
                              seed: int = SEED) -> np.ndarray:
    """Features of each film as another site may present it: the training augmentation `acquisition`
    (framing, rotation, exposure, blur, JPEG; preprocessing.AugmentConfig), drawn with a seed per film
    so that a refit draws the same."""

    from mediflow.data.images import load_image
    from mediflow.preprocessing import AugmentConfig, train_transform

    transform = train_transform(predictor.prep, AugmentConfig.acquisition())

    def maker(i: int, p: Path) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            torch.manual_seed(seed * 1_000_003 + i)
            return transform(load_image(p).image).numpy()
        return make

    return extract_keyed_features(predictor, [(f"{p}#acquired{seed}", maker(i, p)) for i, p in enumerate(paths)],
                                  cache)


def extract_outlier_features(predictor: Predictor, cache: FeatureCache | None) -> tuple[np.ndarray, list[str]]:
    """Features of the generated non-radiographs (data/input_corpus.py, blanks excluded) that the header
    and pixel checks let through (the others never reach the feature check), and each one's source
    picture (the part of its name before the first '-')."""
    from mediflow.data.images import decode_image
    from mediflow.data.input_corpus import corpus
    from mediflow.inference.input_check import rejected

    items, groups = [], []
    for name, kind, data in corpus():
        if kind == "blank":
            continue
        decoded = decode_image(data, name=name, draft_size=predictor.draft_size, keep_gray=True)
        if rejected(predictor.check_before(decoded)):
            continue
        items.append((f"corpus:{kind}/{name}", lambda img=decoded.image: predictor.preprocess_array(img)))
        groups.append(f"{kind}/{name.split('-')[0]}")
    return extract_keyed_features(predictor, items, cache), groups


def fit_for_model(predictor: Predictor, data: str | Path, adult_dir: str | Path, out: str | Path, *,
                  cache: str | Path | None = None, n_pediatric: int = N_PEDIATRIC, seed: int = SEED,
                  progress: Callable[[int, int], None] | None = None) -> InputCheckStats:
    """Extract features, fit, and write the statistics file `out`."""
    ped_paths, _ = pediatric_paths(predictor, data, n_pediatric, seed=seed)
    adult_fit, _, _ = adult_halves(adult_dir, seed=seed)
    fc = FeatureCache(cache, predictor.info.sha256)
    ped = extract_features(predictor, ped_paths, fc, progress=progress)
    adult = extract_features(predictor, adult_fit, fc, progress=progress)
    ped_up = extract_variant_features(predictor, ped_paths, "up", fc)
    adult_small = extract_variant_features(predictor, adult_fit, "small", fc)
    ped_acquired = extract_acquired_features(predictor, ped_paths, fc, seed=seed)
    outliers, outlier_groups = extract_outlier_features(predictor, fc)
    meta = {"model_sha256": predictor.info.sha256, "weights_sha256": predictor.info.weights_sha256,
            "model_architecture": predictor.info.architecture,
            "pediatric_source": f"{len(ped_paths)} films of the training part of the checkpoint's split of {data} "
                                f"(seed {seed})",
            "adult_source": f"{len(adult_fit)} films of the fit half (by patient, seed {seed}) of {adult_dir}, "
                            "age >= 18",
            "command": f"mediflow fit-input-check --data {data} --adult {adult_dir}"}
    meta["outlier_source"] = (f"{len(outliers)} generated non-radiographs (mediflow/data/input_corpus.py) that pass "
                              "the header and pixel checks")
    stats = fit_stats(ped, adult, meta=meta, seed=seed, ped_other_format=ped_up, adult_other_format=adult_small,
                      ped_acquired=ped_acquired, outliers=outliers, outlier_groups=outlier_groups)
    stats.save(out)
    return stats


def describe(stats: InputCheckStats) -> str:
    return json.dumps({"warn_distance": round(stats.warn_distance, 4),
                       "reject_distance": round(stats.reject_distance, 4),
                       "reject_residual": round(stats.reject_residual, 4),
                       "reject_outlier": round(stats.reject_outlier, 4),
                       "adult_threshold": round(stats.adult_threshold, 4),
                       "heldout_distance_max": round(stats.meta.get("heldout_distance_max", float("nan")), 4)})
