"""The input check's figures (docs/input_check.md): what it flags and refuses, and what it costs.

Rows, each through the check as `analyze_folder` and the server run it (decode with the server's
JPEG draft, header and pixel checks, the model's pass, feature checks):
- pediatric chest films: test_dev and the checkpoint's validation split (false warnings and
  rejections; aim <= 2%), fullres_samples (training films at full resolution);
- adult films (nih_adult), the half NOT used to fit the adult classifier (flagged likely_adult; aim
  >= 95%), and its films of patients under 18 (reported apart);
- inputs that are not chest radiographs, built by mediflow/data/input_corpus.py (rejected;
  aim >= 99%), and blanks (rejected; aim 100%).
Then the check's cost on the served path: `Predictor.predict_bytes` (decode, check, model) against the
same path without the check (decode, model: the code before the check existed), interleaved on the
same uploads, p50 of each and of the difference (aim <= 2 ms).

    PYTHONPATH=$PWD python benchmarks/input_check.py [--model M.pth] [--data-root ../shared/data]
        [--cache runs/input_check_features.npz] [--repeats 200]

`--cache`: pooled features per file, as `mediflow fit-input-check --cache` keeps them (same model,
by SHA-256), so the figures need no second pass over thousands of films.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mediflow.data.images import decode_image  # noqa: E402
from mediflow.errors import ImageDecodeError  # noqa: E402
from mediflow.inference.input_check import InputRejected, Reason, rejected  # noqa: E402
from mediflow.inference.predictor import Predictor  # noqa: E402


def verdicts(predictor: Predictor, items: list[tuple[str, bytes]], cache=None) -> list[dict]:
    """The input check's verdict per (key, bytes) item, in batches of 32 through the model."""
    from mediflow.inference.backends import pooled_features
    from mediflow.inference.input_check import summarize

    out: list[dict] = []
    for i in range(0, len(items), 32):
        chunk = items[i:i + 32]
        pre, todo, keys = [], [], []
        for key, data in chunk:
            try:
                decoded = decode_image(data, name=key, draft_size=predictor.draft_size, keep_gray=True)
            except ImageDecodeError as exc:  # the API answers 400: no finding either
                pre.append(([Reason("not_decodable", exc.reason, "rejected")], None))
                continue
            reasons = predictor.check_before(decoded)
            pre.append((reasons, decoded.dicom_header))
            if not rejected(reasons) and not (cache is not None and key in cache.features):
                todo.append(predictor.preprocess_array(decoded.image))
                keys.append(key)
        if todo:
            feats = pooled_features(predictor.backend.run(np.stack(todo), ("features",))["features"])
            if cache is not None:
                cache.features.update(zip(keys, feats))
        fresh = dict(zip(keys, feats)) if todo else {}
        for (key, _), (reasons, header) in zip(chunk, pre):
            if reasons and reasons[0].code == "not_decodable":
                out.append({**summarize(reasons), "status": "not decodable (400)"})
                continue
            if rejected(reasons):
                out.append(summarize(reasons))
                continue
            f = fresh.get(key) if key in fresh else cache.features[key]
            out.append(predictor.check_after(reasons, f, header))
    if cache is not None:
        cache.save()
    return out


def files(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in paths]


def presented(paths: list[Path]) -> list[tuple[str, bytes]]:
    """Each film in every variant of the invariance table (evaluation/invariance.py): framed, padded,
    cropped, re-windowed, re-encoded (the DICOM, JPEG and upscaled variants as those files), rotated,
    mirrored; how the same children's films may arrive from another site."""
    import io

    from PIL import Image

    from mediflow.evaluation.invariance import VARIANTS, EncodedVariant

    out = []
    for name, variant in VARIANTS.items():
        for p in paths:
            with Image.open(p) as im:
                img = im.convert("RGB")
            if isinstance(variant, EncodedVariant):
                data = variant.encode(img)[0]
            else:
                buf = io.BytesIO()
                variant(img).save(buf, format="PNG")
                data = buf.getvalue()
            out.append((f"presented:{name}:{p}", data))
    return out


def row(name: str, checks: list[dict], aim: str, measure: str) -> dict:
    n = len(checks)
    status = Counter(c["status"] for c in checks)
    codes = Counter(r["code"] for c in checks for r in c["reasons"] if r["severity"] != "note")
    if measure == "not ok":
        hit = status["warning"] + status["rejected"]
    elif measure == "rejected":
        hit = status["rejected"]
    elif measure == "no finding":
        hit = status["rejected"] + status["not decodable (400)"]
    else:  # a code
        hit = sum(any(r["code"] == measure for r in c["reasons"]) for c in checks)
    return {"group": name, "n": n, "measure": measure, "share": hit / max(n, 1), "hit": hit, "aim": aim,
            "ok": status["ok"], "warning": status["warning"],
            "rejected": status["rejected"] + status["not decodable (400)"],
            "codes": ", ".join(f"{k} {v}" for k, v in codes.most_common())}


def overhead(predictor: Predictor, uploads: list[bytes], repeats: int) -> dict:
    """p50 ms of predict_bytes with the check vs the same decode + model without it, interleaved."""
    def without(data: bytes) -> None:
        img = decode_image(data, draft_size=predictor.draft_size, keep_gray=True).image
        predictor.response(predictor.probabilities_from_tensors(predictor.preprocess_array(img)[None])[0], 0.0)

    def with_check(data: bytes) -> None:
        try:
            predictor.predict_bytes(data)
        except InputRejected:
            pass

    for data in uploads[:5]:  # warm-up
        without(data)
        with_check(data)
    a, b = [], []
    for k in range(repeats):
        data = uploads[k % len(uploads)]
        order = (without, with_check) if k % 2 else (with_check, without)
        for fn in order:
            t0 = time.perf_counter()
            fn(data)
            (a if fn is without else b).append((time.perf_counter() - t0) * 1000)
    a, b = np.asarray(a), np.asarray(b)
    return {"without_p50": float(np.median(a)), "with_p50": float(np.median(b)), "diff_p50": float(np.median(b - a))}


def check_cost(predictor: Predictor, uploads: list[bytes], repeats: int) -> dict:
    """p50 ms of the check's own steps: header + pixels (before), features (after)."""
    decoded = [decode_image(d, draft_size=predictor.draft_size, keep_gray=True) for d in uploads]
    pooled = predictor.forward(predictor.preprocess_array(decoded[0].image)[None])[2][0]
    before, after = [], []
    for k in range(repeats):
        one = decoded[k % len(decoded)]
        t0 = time.perf_counter()
        reasons = predictor.check_before(one)
        t1 = time.perf_counter()
        predictor.check_after(reasons, pooled, one.dicom_header)
        t2 = time.perf_counter()
        before.append((t1 - t0) * 1000)
        after.append((t2 - t1) * 1000)
    return {"before_p50": float(np.median(before)), "after_p50": float(np.median(after))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache", help="pooled-feature cache (.npz) shared with mediflow fit-input-check --cache")
    ap.add_argument("--repeats", type=int, default=200, help="timed uploads per variant (default 200)")
    ap.add_argument("--skip-figures", action="store_true", help="only the overhead benchmark")
    args = ap.parse_args(argv)

    from mediflow.data.input_corpus import (
        corpus,
        natural_images,
        pydicom_test_files,
        scikit_image_lfw,
        scikit_image_samples,
    )
    from mediflow.inference.backends import serving_threads
    from mediflow.inference.input_check_fit import FeatureCache, adult_halves, pediatric_paths

    predictor = Predictor.load(args.model, threads=serving_threads(), serving=True)
    if not predictor.input_check.uses_features:
        print("note: no input-check statistics fitted on this model: header and pixel checks only")
    root = Path(args.data_root)
    data224, adult_dir, fullres = root / "chest_xray224", root / "nih_adult", root / "fullres_samples"
    rows = []
    if not args.skip_figures:
        cache = FeatureCache(args.cache, predictor.info.sha256) if args.cache else None
        if data224.is_dir():
            test_dev = sorted((data224 / "test_dev").rglob("*.jpeg"))
            _, val = pediatric_paths(predictor, data224, 1)
            rows.append(row("pediatric: test_dev", verdicts(predictor, files(test_dev), cache), "<= 2%", "not ok"))
            rows.append(row("pediatric: validation split", verdicts(predictor, files(val), cache), "<= 2%", "not ok"))
            rows.append(row("pediatric: 60 test_dev films x 13 presentations (invariance variants)",
                            verdicts(predictor, presented(test_dev[::5][:60]), cache), "~0%", "rejected"))
        else:
            print(f"skipped the pediatric rows: {data224} not found")
        if fullres.is_dir():
            rows.append(row("pediatric: fullres_samples (train films, full size)",
                            verdicts(predictor, files(sorted(fullres.rglob("*.jpeg"))), cache), "<= 2%", "not ok"))
        if adult_dir.is_dir():
            _, held, minors = adult_halves(adult_dir)
            held_checks = verdicts(predictor, files(held), cache)
            rows.append(row("adults (nih_adult held-out half, age >= 18)", held_checks, ">= 95%", "likely_adult"))
            rows.append(row("adults (same films)", held_checks, "~0%", "rejected"))
            rows.append(row("nih_adult, patients under 18 (both halves)", verdicts(predictor, files(minors), cache),
                            "(report)", "likely_adult"))
        else:
            print(f"skipped the adult rows: {adult_dir} not found")
        film = None
        if data224.is_dir():
            from PIL import Image

            film = np.asarray(Image.open(sorted((data224 / "test_dev" / "NORMAL").glob("*.jpeg"))[0]).convert("L"))
        items = corpus(film)
        by_kind: dict[str, list] = {}
        for (name, kind, data) in items:
            by_kind.setdefault(kind, []).append((f"corpus:{kind}/{name}", data))
        non_radiographs = []
        for kind, group in by_kind.items():
            checks = verdicts(predictor, group, None)
            if kind != "blank":
                non_radiographs += checks
            rows.append(row(f"generated: {kind}", checks, "100%" if kind == "blank" else ">= 99%", "rejected"))
        rows.append(row("generated: all non-radiographs", non_radiographs, ">= 99%", "rejected"))
        # Real DICOM files of other projects (pydicom's test files), as shipped and with the header
        # fields naming modality and body part removed: answered with no finding (refused, or not
        # decodable: HTTP 400) either way.
        for strip, label in ((False, "as shipped"), (True, "modality, SOP class and body part removed")):
            group = [(f"corpus:pydicom/{name}", data) for name, _, data in pydicom_test_files(strip_identity=strip)]
            rows.append(row(f"real DICOMs of other modalities (pydicom test files), {label}",
                            verdicts(predictor, group, None), "100%", "no finding"))
        # A confirmation set no choice was made on (the corpus above was used to compare designs).
        held_out = list(natural_images(scikit_image_samples(), kind="natural, scikit-image"))
        if held_out:
            rows.append(row("confirmation: scikit-image sample pictures", verdicts(
                predictor, [(f"corpus:skimage/{name}", data) for name, _, data in held_out], None),
                ">= 99%", "rejected"))
            faces = [(f"corpus:lfw/{name}", data) for name, _, data in scikit_image_lfw()]
            rows.append(row("confirmation: scikit-image lfw_subset (100 faces, 100 other patches, 25 px enlarged)",
                            verdicts(predictor, faces, None), ">= 99%", "rejected"))
        else:
            print("skipped the confirmation rows: scikit-image is not installed (pip install scikit-image)")

        print(f"\nInput check on {platform.node() or 'this machine'} ({predictor.backend_name}, model "
              f"{predictor.info.sha256[:12]})\n")
        print("| inputs | n | measured | share | aim | ok / warning / rejected | reasons (not notes) |")
        print("|---|---:|---|---:|---|---|---|")
        for r in rows:
            print(f"| {r['group']} | {r['n']} | {r['measure']} | {r['share']:.1%} ({r['hit']}) | {r['aim']} | "
                  f"{r['ok']} / {r['warning']} / {r['rejected']} | {r['codes']} |")

    uploads = []
    if fullres.is_dir():
        uploads += [p.read_bytes() for p in sorted(fullres.rglob("*.jpeg"))[:16]]
    if data224.is_dir():
        uploads += [p.read_bytes() for p in sorted((data224 / "test_dev").rglob("*.jpeg"))[:16]]
    if not uploads:
        print(f"no films under {root} to time the served path on")
        return 1
    o = overhead(predictor, uploads, args.repeats)
    c = check_cost(predictor, uploads, args.repeats)
    print(f"\nServed path, {len(uploads)} real uploads (full-resolution and 224 px JPEGs), {args.repeats} each way, "
          "interleaved:\n")
    print("| path | p50 ms |")
    print("|---|---:|")
    print(f"| decode + model, no check | {o['without_p50']:.2f} |")
    print(f"| decode + check + model (predict_bytes) | {o['with_p50']:.2f} |")
    print(f"| paired difference (p50 of with - without) | {o['diff_p50']:+.2f} |")
    print(f"| the check's own steps: header + pixels | {c['before_p50']:.3f} |")
    print(f"| the check's own steps: features | {c['after_p50']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
