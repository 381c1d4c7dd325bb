"""How a model does on films it has not seen, beside the floor and under the same film presented differently.

One markdown table, side by side:
- validation: the patient-grouped split of train that `mediflow train` makes (fraction and seed
  from the checkpoint's `val_split`; whether the file list matches the checkpoint's is printed).
  The threshold, calibration and epoch were chosen on it, so it flatters the model;
- test_dev (films of other patients, acquired apart from train): n, AUC with a 95% stratified
  bootstrap interval, accuracy, balanced accuracy, sensitivity, specificity at the model's stored
  operating point (the Predictor's own decision; metrics by `compute_metrics`);
- the floor: logistic regression on 16x16 grayscale thumbnails of the training part of the same
  split (framing and global exposure, nearly nothing of the lungs), AUC on both sets;
- invariance on the test_dev films: for each variant of `mediflow.evaluation.invariance.VARIANTS`,
  decisions that flip against the unaltered film at the operating point, and |dP| of the reported
  P(PNEUMONIA); plus all variants together.

Every film goes through the serving path: the server's decode (`decode_image` with the model's
draft size, grayscale kept; variants that produce a file are decoded that way too), the model's
`preprocess_array`, `probabilities_from_tensors` in batches, and the reported probability and call
from `Predictor.response`.

    PYTHONPATH=$PWD python benchmarks/generalization.py [--model PATH] [--backend auto|onnx|torch]
        [--data ../shared/data/chest_xray224] [--json out.json] [--films N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mediflow.data.dataset import Samples, grouped_split, scan_class_folders
from mediflow.data.images import decode_image
from mediflow.errors import MediFlowError
from mediflow.evaluation.invariance import ORIGINAL_FORMS, VARIANTS, EncodedVariant, FilmPair, original_copy_pairs
from mediflow.inference.predictor import BACKENDS, Predictor
from mediflow.metrics import compute_metrics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray224"
THUMB = 16  # px a side: framing and exposure survive at this size, pneumonia hardly does
THUMB_C = 1.0  # the logistic regression's inverse L2 strength: scikit-learn's default, not tuned
BOOTSTRAP = 2000  # resamples for the AUC interval
BATCH = 32
ROC_POINTS = 200
CALIBRATION_BINS = 10


def machine_description() -> str:
    """'CPU model name, N cores, SIMD' from /proc/cpuinfo (platform.processor() elsewhere). The SIMD
    extensions matter: ONNX Runtime's int8 kernels compute differently with and without VNNI."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return (f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            + (f", {'/'.join(simd).upper()}" if simd else ""))


def serve_decode(p: Predictor, data: bytes, name: str) -> Image.Image:
    """Bytes -> the image the server would hand the model (as in `Predictor.predict_bytes`)."""
    return decode_image(data, name=name, draft_size=p.draft_size, keep_gray=True).image


def thumbnail(img: Image.Image) -> np.ndarray:
    """(THUMB*THUMB,) float32 grey levels in [0, 1]: the image squashed to THUMB x THUMB by box
    (area) averaging, as the model squashes its input."""
    small = img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel() / 255.0


def model_labels(p: Predictor, samples: Samples) -> np.ndarray:
    """Folder labels mapped onto the model's class order; raises MediFlowError for a class the model
    does not know."""
    unknown = set(samples.class_names) - set(p.class_names)
    if unknown:
        raise MediFlowError(f"classes {sorted(unknown)} are not among the model's {p.class_names}")
    remap = [p.class_names.index(n) for n in samples.class_names]
    return np.asarray([remap[y] for y in samples.labels], dtype=int)


def _chunks(n: int, size: int) -> Iterable[range]:
    return (range(i, min(i + size, n)) for i in range(0, n, size))


def predict(p: Predictor, images: Sequence[Image.Image], pool: ThreadPoolExecutor,
            transform: Callable[[Image.Image], Image.Image] | None = None, batch: int = BATCH) -> np.ndarray:
    """(N, K) calibrated probabilities of `transform(image)` for each image: `probabilities_from_images`
    with the (per-image, GIL-releasing) transform and preprocessing spread over the pool."""
    def prep(img: Image.Image) -> np.ndarray:
        return p.preprocess_array(transform(img) if transform else img)

    out = [p.probabilities_from_tensors(np.stack(list(pool.map(prep, [images[i] for i in idx]))))
           for idx in _chunks(len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(p.class_names)))


def reported(p: Predictor, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the API reports for each row of `probs` (N, K): P(positive class) as in the response's
    `probabilities` (rounded to 4 decimals there) and whether the call is the positive class."""
    name = p.class_names[p.pos]
    rs = [p.response(row, 0.0) for row in probs]
    return (np.asarray([r["probabilities"][name] for r in rs], dtype=np.float64),
            np.asarray([r["prediction"] == name for r in rs], dtype=bool))


def confusion(truth: np.ndarray, called: np.ndarray, pos: int) -> list[list[int]]:
    """2x2 confusion matrix (rows truth, columns call) in the model's class order, from boolean
    'is the positive class' arrays (N,)."""
    cm = [[0, 0], [0, 0]]
    for t, c in zip(truth, called):
        cm[pos if t else 1 - pos][pos if c else 1 - pos] += 1
    return cm


def load_and_score(p: Predictor, paths: Sequence[Path], pool: ThreadPoolExecutor, *, score: bool = True,
                   keep: bool = False) -> tuple[np.ndarray | None, np.ndarray, list[Image.Image]]:
    """Decode `paths` as the server would, in chunks: probabilities (N, K) when `score`, thumbnails
    (N, THUMB*THUMB), and the decoded images when `keep` (else an empty list, to bound memory)."""
    def load(path: Path) -> Image.Image:
        return serve_decode(p, path.read_bytes(), path.name)

    probs, thumbs, kept = [], [], []
    for idx in _chunks(len(paths), 4 * BATCH):
        imgs = list(pool.map(load, [paths[i] for i in idx]))
        thumbs.append(np.stack(list(pool.map(thumbnail, imgs))))
        if score:
            probs.append(predict(p, imgs, pool))
        if keep:
            kept += imgs
    return (np.concatenate(probs) if score else None), np.concatenate(thumbs), kept


def auc_ci_bootstrap(y: np.ndarray, s: np.ndarray, *, n_boot: int = BOOTSTRAP, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the ROC AUC of scores `s` (N,) for binary labels `y` (N,), from
    `n_boot` stratified bootstrap resamples (positives and negatives resampled separately, so each
    resample keeps the class counts; Efron & Tibshirani 1993, ch. 13). AUC by the Mann-Whitney rank
    formula, ties counting half. Raises ValueError when a class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    sp, sn = s[y], s[~y]
    if not len(sp) or not len(sn):
        raise ValueError("AUC needs both classes")
    rng = np.random.default_rng(seed)
    both = np.concatenate([sp[rng.integers(0, len(sp), (n_boot, len(sp)))],
                           sn[rng.integers(0, len(sn), (n_boot, len(sn)))]], axis=1)
    ranks = rankdata(both, axis=1)
    aucs = (ranks[:, :len(sp)].sum(axis=1) - len(sp) * (len(sp) + 1) / 2) / (len(sp) * len(sn))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(aucs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_auc_difference(y: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, *, n_boot: int = BOOTSTRAP,
                          seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """AUC(s_b) - AUC(s_a) on the same films (scores (N,) of two models for binary labels y (N,)), with
    a percentile interval from `n_boot` paired stratified bootstrap resamples: each resample draws
    the same films for both models, so the films' shared difficulty cancels and the interval is far
    narrower than two separate ones would suggest. Also the share of resamples where B is not better
    (a one-sided bootstrap p-value). Raises ValueError when a class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    ip, in_ = np.flatnonzero(y), np.flatnonzero(~y)
    if not len(ip) or not len(in_):
        raise ValueError("AUC needs both classes")
    rng = np.random.default_rng(seed)
    idx = np.concatenate([ip[rng.integers(0, len(ip), (n_boot, len(ip)))],
                          in_[rng.integers(0, len(in_), (n_boot, len(in_)))]], axis=1)

    def aucs(s: np.ndarray) -> np.ndarray:
        ranks = rankdata(np.asarray(s, dtype=np.float64)[idx], axis=1)
        return (ranks[:, :len(ip)].sum(axis=1) - len(ip) * (len(ip) + 1) / 2) / (len(ip) * len(in_))

    def auc(s: np.ndarray) -> float:
        r = rankdata(np.asarray(s, dtype=np.float64))
        return float((r[y].sum() - len(ip) * (len(ip) + 1) / 2) / (len(ip) * len(in_)))

    diff = aucs(s_b) - aucs(s_a)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diff, [alpha, 1 - alpha])
    return {"difference": auc(s_b) - auc(s_a), "ci95": [float(lo), float(hi)],
            "p_not_better": float(np.mean(diff <= 0))}


def roc_points(y: np.ndarray, s: np.ndarray, max_points: int = ROC_POINTS) -> dict[str, list[float]]:
    """The ROC curve (sklearn's, collinear points dropped), thinned to at most `max_points` points
    evenly spaced along it, both ends kept."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]}


def calibration_bins(y: np.ndarray, s: np.ndarray, n_bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Reliability diagram: `n_bins` equal-width bins of P on [0, 1]; for each non-empty bin its edges
    (`lo`, `hi`), mean P, fraction of positives and count."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    which = np.minimum((s * n_bins).astype(int), n_bins - 1)
    return [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "p_mean": float(s[which == b].mean()),
             "frac_positive": float(y[which == b].mean()), "n": int((which == b).sum())}
            for b in range(n_bins) if (which == b).any()]


def thumbnail_baseline(x_train: np.ndarray, y_train: np.ndarray,
                       sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Fit standardise + L2 logistic regression (C = THUMB_C) on thumbnails `x_train` (N, D) with
    binary labels; AUC on each of `sets` (name -> (X, y))."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=THUMB_C, max_iter=5000))
    clf.fit(x_train, y_train)
    return {name: float(roc_auc_score(y, clf.predict_proba(x)[:, 1])) for name, (x, y) in sets.items()}


def variant_transform(p: Predictor, variant: Callable[[Image.Image], Image.Image]
                      ) -> Callable[[Image.Image], Image.Image]:
    """The variant as the server would receive it: a variant that produces a file is decoded the
    server's way (JPEG draft mode), the others hand over their image."""
    if isinstance(variant, EncodedVariant):
        return lambda img: serve_decode(p, *variant.encode(img))
    return variant


def invariance(p: Predictor, films: Sequence[Image.Image], pool: ThreadPoolExecutor,
               variants: dict[str, Callable[[Image.Image], Image.Image]],
               progress: Callable[[str], None] = lambda _: None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """For each variant: decision flips against the unaltered films at the model's operating point,
    and |dP| of the reported P(positive class). Returns per-variant rows and the overall row
    (`worst_variant`: the variant with the highest flip rate)."""
    base_p, base_call = reported(p, predict(p, films, pool))
    rows = []
    for name, variant in variants.items():
        t = time.perf_counter()
        var_p, var_call = reported(p, predict(p, films, pool, variant_transform(p, variant)))
        dp = np.abs(var_p - base_p)
        flips = int((var_call != base_call).sum())
        rows.append({"variant": name, "n": len(films), "flips": flips,
                     "to_positive": int((var_call & ~base_call).sum()),
                     "flip_rate": flips / len(films) if len(films) else float("nan"),
                     "mean_abs_dp": float(dp.mean()) if len(dp) else float("nan"),
                     "max_abs_dp": float(dp.max()) if len(dp) else float("nan")})
        progress(f"invariance {name}: {flips}/{len(films)} flips ({time.perf_counter() - t:.0f} s)")
    return rows, summarize_invariance(rows)


def summarize_invariance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """All variants x films together: n, flips, flip rate, and the worst variant by flip rate."""
    n = sum(r["n"] for r in rows)
    flips = sum(r["flips"] for r in rows)
    worst = max(rows, key=lambda r: r["flip_rate"]) if rows else None
    return {"n": n, "flips": flips, "flip_rate": flips / n if n else float("nan"),
            "worst_variant": worst["variant"] if worst else None,
            "worst_flip_rate": worst["flip_rate"] if worst else None}


def original_vs_copy(p: Predictor, pairs: Sequence[FilmPair], pool: ThreadPoolExecutor,
                     progress: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Each original film in every form of ORIGINAL_FORMS against its training copy, both through the
    server's decode and the model: per form, n, calls that agree with the copy's, the positive-call
    rate on positive films for the form and for the copies, and |dP| of the reported P(positive).
    The copies' own row comes first. Originals are decoded one chunk at a time (full-resolution
    PNG and DICOM films are large)."""
    pos_name = p.class_names[p.pos]
    is_pos = np.asarray([fp.label == pos_name for fp in pairs], dtype=bool)

    def load_copy(fp: FilmPair) -> Image.Image:
        return serve_decode(p, fp.copy.read_bytes(), fp.copy.name)

    copy_p, copy_call = reported(p, np.concatenate([predict(p, list(pool.map(load_copy, [pairs[i] for i in idx])), pool)
                                                    for idx in _chunks(len(pairs), BATCH)]))
    forms: dict[str, list[np.ndarray]] = {name: [] for name in ORIGINAL_FORMS}
    t = time.perf_counter()
    for idx in _chunks(len(pairs), 8):
        def encode_all(i: int) -> list[Image.Image]:
            data = pairs[i].original.read_bytes()
            with Image.open(io.BytesIO(data)) as full:  # the bytes already read, closed when done
                full.load()
                return [serve_decode(p, *encode(data, full)) for encode in ORIGINAL_FORMS.values()]

        decoded = list(pool.map(encode_all, idx))
        for k, name in enumerate(ORIGINAL_FORMS):
            forms[name].append(predict(p, [d[k] for d in decoded], pool))
    progress(f"original vs copy: {len(pairs)} films x {len(ORIGINAL_FORMS)} forms ({time.perf_counter() - t:.0f} s)")

    def row(name: str, rp: np.ndarray, call: np.ndarray) -> dict[str, Any]:
        return {"form": name, "n": len(pairs), "agree": float(np.mean(call == copy_call)),
                "positive_rate": float(call[is_pos].mean()) if is_pos.any() else float("nan"),
                "copy_positive_rate": float(copy_call[is_pos].mean()) if is_pos.any() else float("nan"),
                "n_positive": int(is_pos.sum()), "mean_abs_dp": float(np.abs(rp - copy_p).mean())}

    rows = [row("224 px copy", copy_p, copy_call)]
    for name, chunks in forms.items():
        rows.append(row(name, *reported(p, np.concatenate(chunks))))
    return rows


def fixed_subset(n_total: int, n: int | None) -> list[int]:
    """`n` of `n_total` indices spread evenly over the sorted file list (all when n is None)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(set(np.linspace(0, n_total - 1, n).round().astype(int).tolist()))


def run(model: str | None, backend: str, data: Path, *, films: int | None = None,
        variants: dict[str, Callable[[Image.Image], Image.Image]] | None = None, workers: int | None = None,
        originals: Sequence[Path] = (), progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document (see module docstring and docs/generalization.md).
    Raises MediFlowError (or DatasetError) for a missing model or data folder."""
    t0 = time.perf_counter()
    variants = VARIANTS if variants is None else variants
    p = Predictor.load(model, backend=backend)
    if p.pos is None:
        raise MediFlowError(f"the benchmark needs a binary model; this one has classes {p.class_names}")
    pos_name = p.class_names[p.pos]
    split = p.ckpt.get("val_split") or {}
    fraction, seed = float(split.get("val_fraction", 0.2)), int(split.get("seed", 0))
    train, val = grouped_split(scan_class_folders(data / "train"), val_fraction=fraction, seed=seed)
    test = scan_class_folders(data / "test_dev", min_classes=1)
    split_matches = (val.file_list_sha256() == p.ckpt["val_file_list_sha256"]
                     if p.ckpt.get("val_file_list_sha256") else None)
    y_val, y_test = model_labels(p, val), model_labels(p, test)
    y_train = model_labels(p, train)
    progress(f"{p.info.architecture} ({p.backend_name}); {len(train)} train / {len(val)} validation / "
             f"{len(test)} test_dev films")

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        _, th_train, _ = load_and_score(p, train.paths, pool, score=False)
        progress(f"train thumbnails ({time.perf_counter() - t0:.0f} s)")
        pr_val, th_val, _ = load_and_score(p, val.paths, pool)
        progress(f"validation scored ({time.perf_counter() - t0:.0f} s)")
        pr_test, th_test, test_imgs = load_and_score(p, test.paths, pool, keep=True)
        progress(f"test_dev scored ({time.perf_counter() - t0:.0f} s)")

        val_m = compute_metrics(y_val, pr_val, p.class_names, threshold=p.threshold, positive_class=pos_name)
        test_m = compute_metrics(y_test, pr_test, p.class_names, threshold=p.threshold, positive_class=pos_name)
        # The metrics' rule must be the call the API makes, or the table describes another model.
        _, calls = reported(p, pr_test)
        if not np.array_equal(calls, p.decide(pr_test) == p.pos) or \
                confusion(y_test == p.pos, calls, p.pos) != test_m["confusion_matrix"]:
            raise MediFlowError("the Predictor's call differs from compute_metrics' rule; "
                                "update this benchmark to the new decision rule")

        floor = thumbnail_baseline(th_train, y_train == p.pos,
                                   {"validation": (th_val, y_val == p.pos), "test_dev": (th_test, y_test == p.pos)})
        progress(f"thumbnail baseline ({time.perf_counter() - t0:.0f} s)")

        subset = fixed_subset(len(test_imgs), films)
        inv_rows, inv_all = invariance(p, [test_imgs[i] for i in subset], pool, variants, progress)
        pairs = original_copy_pairs(originals, data / "train")
        ovc_rows = original_vs_copy(p, pairs, pool, progress) if pairs else []

    s_test = pr_test[:, p.pos]
    lo, hi = auc_ci_bootstrap(y_test == p.pos, s_test)
    model_path = p.info.path
    return {
        "model": {"path": model_path, "sha256": p.info.sha256, "architecture": p.info.architecture,
                  "backend": p.backend_name},
        "machine": machine_description(),
        "seconds": round(time.perf_counter() - t0, 1),
        "data": str(data),
        "validation": {"n": val_m["n"], "auc": val_m["auc"], "accuracy": val_m["accuracy"],
                       "balanced_accuracy": val_m["balanced_accuracy"], "sensitivity": val_m["sensitivity"],
                       "specificity": val_m["specificity"], "val_fraction": fraction, "seed": seed,
                       "matches_checkpoint_split": split_matches},
        "test_dev": {"n": test_m["n"], "auc": test_m["auc"], "auc_ci95": [lo, hi],
                     "auc_ci_method": f"stratified bootstrap, {BOOTSTRAP} resamples, percentile, seed 0",
                     "accuracy": test_m["accuracy"], "balanced_accuracy": test_m["balanced_accuracy"],
                     "sensitivity": test_m["sensitivity"], "specificity": test_m["specificity"],
                     "threshold": p.threshold, "positive_class": pos_name, "class_names": p.class_names,
                     "confusion_matrix": test_m["confusion_matrix"],
                     "roc": roc_points(y_test == p.pos, s_test),
                     "calibration": {"bins": calibration_bins(y_test == p.pos, s_test)}},
        "thumbnail_baseline": {"validation_auc": floor["validation"], "test_dev_auc": floor["test_dev"],
                               "method": f"{THUMB}x{THUMB} grayscale box-averaged thumbnails, standardised, "
                                         f"L2 logistic regression C={THUMB_C}, fit on the training part of the split"},
        "invariance": inv_rows,
        "invariance_overall": {**inv_all, "films": "all test_dev films" if len(subset) == len(test_imgs)
                               else f"{len(subset)} of {len(test_imgs)} test_dev films, evenly spaced in sorted order"},
        "original_vs_copy": ovc_rows,
        "original_vs_copy_folders": [str(d) for d in originals if Path(d).is_dir()],
    }


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinities as None (null): strict JSON for the web app that reads it."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_table(r: dict[str, Any]) -> str:
    """The result as header lines and one markdown table (measure | validation | test_dev)."""
    v, t, f, o = r["validation"], r["test_dev"], r["thumbnail_baseline"], r["invariance_overall"]
    m = r["model"]
    match = {True: "the checkpoint's own validation files", False: "NOT the checkpoint's validation files",
             None: "checkpoint records no file list"}[v.get("matches_checkpoint_split")]
    lines = [
        f"machine: {r['machine']}; wall time {r['seconds']:.0f} s",
        f"model: {m['path']} ({m['architecture']}, {m['backend']} backend, sha256 {m['sha256'][:12]})",
        f"validation: patient-grouped {v['val_fraction']:.0%} of train, seed {v['seed']} ({match}); "
        f"threshold, calibration and epoch were chosen on it",
        f"operating point: P({t['positive_class']}) >= {t['threshold']:.4f}; AUC 95% CI: {t['auc_ci_method']}",
        f"invariance: {o['films']}; a flip is a changed call against the unaltered film, dP the change of "
        f"the reported P({t['positive_class']})",
        "",
        "| measure | validation | test_dev |",
        "|---|---|---|",
        f"| films | {v['n']} | {t['n']} |",
        f"| AUC (95% CI) | {v['auc']:.3f} | {t['auc']:.3f} ({t['auc_ci95'][0]:.3f}-{t['auc_ci95'][1]:.3f}) |",
        f"| accuracy | {v['accuracy']:.3f} | {t['accuracy']:.3f} |",
        f"| balanced accuracy | {v['balanced_accuracy']:.3f} | {t['balanced_accuracy']:.3f} |",
        f"| sensitivity ({t['positive_class']}) | {v['sensitivity']:.3f} | {t['sensitivity']:.3f} |",
        f"| specificity | {v['specificity']:.3f} | {t['specificity']:.3f} |",
        f"| floor: {THUMB}x{THUMB} thumbnail logistic regression AUC | {f['validation_auc']:.3f} "
        f"| {f['test_dev_auc']:.3f} |",
    ]
    for row in r["invariance"]:
        lines.append(f"| flips: {row['variant']} | | {row['flips']}/{row['n']} ({_pct(row['flip_rate'])}); "
                     f"\\|dP\\| mean {row['mean_abs_dp']:.3f}, max {row['max_abs_dp']:.3f} |")
    lines.append(f"| flips: all variants | | {o['flips']}/{o['n']} ({_pct(o['flip_rate'])}); worst "
                 f"{o['worst_variant']} ({_pct(o['worst_flip_rate'])}) |")
    ovc = r.get("original_vs_copy") or []
    if ovc:
        lines += ["", f"original vs copy: training films' full-resolution originals "
                      f"({', '.join(r['original_vs_copy_folders'])}) "
                      f"against their 224 px copies (PIL bilinear squash, JPEG q75), {ovc[0]['n']} films, "
                      f"{ovc[0]['n_positive']} {t['positive_class']}",
                  "", f"| form | calls agreeing with the copy's | {t['positive_class']} called on "
                      f"{t['positive_class']} films "
                      f"(copies: {_pct(ovc[0]['copy_positive_rate'])}) | \\|dP\\| mean |", "|---|---|---|---|"]
        for row in ovc:
            lines.append(f"| {row['form']} | {_pct(row['agree'])} | {_pct(row['positive_rate'])} "
                         f"| {row['mean_abs_dp']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint or ONNX export (default: the bundled model)")
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--data", type=Path, default=DATA, help=f"folder with train/ and test_dev/ (default {DATA})")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    ap.add_argument("--originals", type=Path, nargs="*", default=None,
                    help="class folders of full-resolution originals whose copies are in DATA/train, for the "
                         "original-vs-copy rows (default: fullres_train and fullres_samples beside DATA; none: skip)")
    ap.add_argument("--films", type=int, default=None,
                    help="invariance on this many test_dev films, evenly spaced in sorted order (default: all)")
    ap.add_argument("--workers", type=int, default=None, help="decode/preprocess threads (default: CPU count)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    for sub in ("train", "test_dev"):
        if not (args.data / sub).is_dir():
            print(f"error: {args.data / sub}: no such folder (--data needs train/ and test_dev/)", file=sys.stderr)
            return 2
    if args.films is not None and args.films < 1:
        print("error: --films must be at least 1", file=sys.stderr)
        return 2
    say = (lambda _: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        originals = [args.data.parent / "fullres_train", args.data.parent / "fullres_samples"] \
            if args.originals is None else args.originals
        result = run(args.model, args.backend, args.data, films=args.films, workers=args.workers,
                     originals=originals, progress=say)
    except MediFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
