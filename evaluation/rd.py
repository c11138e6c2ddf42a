"""Rate–distortion evaluation: our codec and classical baselines on the same images.

Every point is measured on real files: bpp is the size of the whole bitstream (header, codes
and checksums; entropy-coded, version 2) × 8 / pixels, and ``bpp-payload`` counts only the coded
bits; ``bpp-raw`` and ``bpp-payload-raw`` are the same for the raw codes (version 1 files: 0.125 bpp
of codes per iteration on images whose sides are multiples of 16), whose curve :func:`raw_codes`
gives. PSNR on 8-bit RGB and the standard
5-scale MS-SSIM (pytorch-msssim, data range 255) are computed per image and then averaged
over the set, as the published Kodak curves are; MS-SSIM in dB (−10·log10(1 − MS-SSIM)) is
taken of that mean, as the published plots do.

Results follow CompressAI's JSON format: ``{"name", "description", "results": {"bpp",
"psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", …}}``, with lists indexed by
operating point (iteration count or quality). In memory each result also carries
``per_image``, the rows of the per-image CSV.

Scoring and timing (``timing``):

- ``"sample"`` (the default): each image is compressed once, at the largest iteration count K; the
  file for each smaller k is its prefix (byte for byte the file ``compress`` writes for k, see
  :func:`prefix_bitstream`), and the reconstructions are the encoder's own
  (:func:`compress_progressive`, bit for bit the decoder's), so nothing is decoded: bpp, PSNR and
  MS-SSIM are exactly those of a real ``compress``/``decompress`` at each k. On the first
  ``timing_images`` images the file is also decoded for real, and the encode and decode times at
  every k are split out of that compress and that decode, timed per iteration: a compress at k does
  the same work as the first k iterations of one at K (minus the k-th decoder step, which it skips),
  and a decode of the k-iteration prefix the same as the first k iterations of the whole file's. Other
  images carry no times.
- ``"exact"``: the real ``compress`` and ``decompress`` at every k on every image, each timed (for
  k = 1..16, 8.5 times the codec work of one compress and one progressive decode at 16).
- ``"prefix"``: ``"sample"`` with every image timed.

The metrics of one image's reconstructions (every k, or every baseline quality) are computed in one
batched call (:func:`~rnncodec.evaluation.quality.image_metrics_many`).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnncodec.codec.bitstream import (
    compress,
    compress_progressive,
    decompress,
    decompress_progressive,
    parse_header,
    payload_bytes,
    prefix_bitstream,
)
from rnncodec.codec.errors import CodecError
from rnncodec.codec.metrics import ms_ssim_db, rd_auc
from rnncodec.codec.model import RNNCodec
from rnncodec.codec.options import MAX_ITERATIONS
from rnncodec.data.errors import shown
from rnncodec.data.images import list_images, load_image
from rnncodec.evaluation import baselines as _baselines
from rnncodec.evaluation.quality import MIN_MS_SSIM_SIDE, image_metrics_many

METRICS = ("psnr-rgb", "ms-ssim-rgb")
AUC_RANGE = (0.125, 2.0)
AUC_EXTRAPOLATION = 0.1  # a curve may stop short of an AUC range end by this fraction of it
TIMINGS = ("sample", "exact", "prefix")
TIMING_IMAGES = 1  # images timed at every iteration count under timing="sample"
RATES = ("bpp-payload", "bpp-raw", "bpp-payload-raw")  # besides the whole entropy-coded file's bpp

NamedImages = list[tuple[str, np.ndarray]]


# ---------------------------------------------------------------------------------------------
# Inputs


def parse_iterations(spec: str | int | Sequence[int]) -> list[int]:
    """``"1-16"``, ``"1,2,4,8,16"``, ``"1-4,8"`` or ``8`` → sorted unique iteration counts in
    1..16; anything else raises :class:`CodecError`."""
    wrong = CodecError(f"iterations must lie in 1..{MAX_ITERATIONS} (0.125 bpp each), got {shown(spec)}")
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        items = []
        for part in spec.replace(" ", "").split(",")[:MAX_ITERATIONS + 1]:
            m = re.fullmatch(r"(\d{1,9})(?:-(\d{1,9}))?", part)
            if not m:
                raise CodecError(f"bad iteration list {shown(spec)}; write e.g. 1-16, 1,2,4,8,16 or 1-4,8")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if lo > hi:
                raise CodecError(f"bad iteration range {part!r} in {shown(spec)}: the start exceeds the end")
            if not 1 <= lo <= hi <= MAX_ITERATIONS:
                raise wrong  # checked before the range is listed
            items += range(lo, hi + 1)
    else:
        items = [int(v) for v in spec]
    if not items or any(not 1 <= k <= MAX_ITERATIONS for k in items):
        raise wrong
    return sorted(set(items))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size``×``size`` window of an H×W×3 image (the whole side where it is smaller)."""
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(image[y : y + size, x : x + size])


def load_images(folder: str | Path, limit: int | None = None, crop: int | None = None) -> NamedImages:
    """``(file name, H×W×3 uint8)`` for the images in ``folder`` (sorted; the first ``limit``;
    each centre-cropped to ``crop``×``crop`` if given)."""
    files = list_images(folder)
    if limit is not None:
        if limit < 1:
            raise CodecError(f"the image limit must be at least 1, got {limit}")
        files = files[:limit]
    images = [(p.name, load_image(p)) for p in files]
    if crop is not None:
        if crop < MIN_MS_SSIM_SIDE:
            raise CodecError(f"the crop size must be at least {MIN_MS_SSIM_SIDE} pixels (standard 5-scale MS-SSIM), "
                             f"got {crop}")
        images = [(n, center_crop(im, crop)) for n, im in images]
    return images


def checked_images(images: Sequence[Any]) -> NamedImages:
    """``(name, H×W×3 uint8)`` of each of ``images`` (paths, such pairs or arrays); CodecError in one line
    for any that is not an RGB image large enough for 5-scale MS-SSIM."""
    out = []
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            out.append((Path(item).name, load_image(item)))
        elif isinstance(item, tuple):
            out.append((str(item[0]), np.asarray(item[1])))
        else:
            out.append((f"image{i:02d}", np.asarray(item)))
    if not out:
        raise CodecError("no images to evaluate on")
    for name, im in out:
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise CodecError(f"{name}: expected an H×W×3 uint8 RGB image, got {im.dtype} {im.shape}")
        if min(im.shape[:2]) < MIN_MS_SSIM_SIDE:
            raise CodecError(f"{name} is {im.shape[1]}×{im.shape[0]}; standard 5-scale MS-SSIM needs at least "
                             f"{MIN_MS_SSIM_SIDE} pixels a side; use larger images (or, with `rnncodec eval`, a larger --crop)")
    return out


# ---------------------------------------------------------------------------------------------
# Measurements


def file_bpp(data: bytes | int, pixels: int) -> float:
    """Bits per pixel of a file of ``data`` bytes (or that many bytes) over ``pixels`` pixels."""
    return (data if isinstance(data, int) else len(data)) * 8 / pixels


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _mean_results(rows: list[dict[str, Any]], key: str, extra: Sequence[str] = ()) -> dict[str, list]:
    """Per-point means over the images; times over the rows that have them (NaN where none has)."""
    points = sorted({r[key] for r in rows})
    out: dict[str, list] = {key: points}
    for field in ("bpp", *extra, "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"):
        out[field] = [_mean([r[field] for r in rows if r[key] == p and field in r]) for p in points]
    out["ms-ssim-db"] = [ms_ssim_db(v) for v in out["ms-ssim-rgb"]]
    return out


def _device_sync(model: RNNCodec) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(model: RNNCodec, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall time in seconds, the model's device included."""
    start = time.perf_counter()
    out = fn(*args)
    _device_sync(model)
    return out, time.perf_counter() - start


Point = tuple[bytes, np.ndarray, float | None, float | None]  # file, reconstruction, encode s, decode s


def _exact_points(model: RNNCodec, image: np.ndarray, ks: list[int]) -> dict[int, Point]:
    """A real ``compress`` and ``decompress`` at every k, each timed."""
    points = {}
    for k in ks:
        data, enc = _timed(model, compress, model, image, k)
        rec, dec = _timed(model, decompress, model, data)
        points[k] = (data, rec, enc, dec)
    return points


def _prefix_points(model: RNNCodec, image: np.ndarray, ks: list[int], timed: bool) -> dict[int, Point]:
    """One ``compress`` at the largest k, whose prefixes are the files of the smaller k and whose
    reconstructions (the encoder's own) are the decoder's, bit for bit. ``timed``: the times of
    ``compress`` and ``decompress`` at every k, split out of that compress and one real progressive
    decode of its file (the ``times`` of :func:`compress_progressive` and
    :func:`decompress_progressive`), whose reconstructions are checked against the encoder's."""
    top = ks[-1]
    enc: list[float] = []
    dec: list[float] = []
    data, recs = compress_progressive(model, image, top, times=enc if timed else None)
    if timed:
        decoded = decompress_progressive(model, data, times=dec)
        if k := next((k for k in ks if not np.array_equal(decoded[k - 1], recs[k - 1])), None):
            raise CodecError(f"the decoder's reconstruction at {k} iterations differs from the encoder's on this "
                             "device; score with --timing exact, and report it as a bug")
    return {k: (prefix_bitstream(data, k), recs[k - 1], *((enc[k - 1], dec[k - 1]) if timed else (None, None)))
            for k in ks}


def timing_description(timing: str, timing_images: int = TIMING_IMAGES) -> str:
    """How :func:`evaluate_checkpoint` scores and times under ``timing`` and ``timing_images`` (see the
    module's docstring); bad values raise :class:`CodecError`."""
    if timing not in TIMINGS:
        raise CodecError(f"timing must be one of {', '.join(TIMINGS)}, got {shown(timing)}")
    if isinstance(timing_images, bool) or not isinstance(timing_images, int) or timing_images < 0:
        raise CodecError(f"the number of timed images must be a whole number ≥ 0, got {shown(timing_images)}")
    if timing == "exact":
        return "real compress and decompress at every iteration count on every image, each timed"
    scoring = ("quality from one compress at the largest count (smaller counts: its prefixes) and the encoder's "
               "reconstructions (bit for bit the decoder's)")
    if timing == "sample" and not timing_images:
        return f"{scoring}; no times"
    sample = "every image" if timing == "prefix" else (
        f"the first {timing_images} images" if timing_images > 1 else "the first image")
    return (f"{scoring}; times on {sample}: compress and decompress at each count, split out of that compress and "
            "one real decode at the largest count, timed per iteration")


def evaluate_checkpoint(model: RNNCodec, images: Sequence[Any], iterations: str | int | Sequence[int] = "1-16",
                        *, name: str = "rnncodec", description: str | None = None, timing: str = "sample",
                        timing_images: int = TIMING_IMAGES,
                        advance: Callable[[], None] | None = None) -> dict[str, Any]:
    """Rate–distortion of ``model`` on ``images`` (paths, arrays, or ``(name, array)`` pairs) at
    each iteration count: a CompressAI-format dict (``results`` holds per-point means over the
    images, including ``iterations`` and ``bpp-payload``; times averaged over the timed images) plus
    ``per_image`` rows (times only on timed images) and ``timing`` (:func:`timing_description`).
    ``timing`` and ``timing_images``: see the module's docstring. ``advance`` is called after each
    image (for progress bars)."""
    ks = parse_iterations(iterations)
    how = timing_description(timing, timing_images)
    named = checked_images(images)
    model.eval()
    compress(model, np.zeros((32, 32, 3), np.uint8), 1)  # warm-up: model id, lazy initialisation
    rows = []
    for i, (img_name, image) in enumerate(named):
        pixels = image.shape[0] * image.shape[1]
        if timing == "exact":
            points = _exact_points(model, image, ks)
        else:
            points = _prefix_points(model, image, ks, timed=timing == "prefix" or i < timing_images)
        for k, metrics in zip(ks, image_metrics_many(image, [points[k][1] for k in ks])):
            data, _, enc, dec = points[k]
            header = parse_header(data)
            times = {} if enc is None else {"encoding_time": enc, "decoding_time": dec}
            rows.append({"image": img_name, "iterations": k, "bytes": len(data), "bpp": file_bpp(data, pixels),
                         "bpp-payload": file_bpp(payload_bytes(data), pixels),
                         "bpp-raw": file_bpp(header.raw_file_bytes(), pixels),
                         "bpp-payload-raw": file_bpp(k * header.chunk_bytes, pixels), **metrics, **times})
        if advance is not None:
            advance()
    if description is None:
        cfg = model.config
        description = (f"rnncodec {cfg.cell}/{cfg.mode} width {cfg.width:g}, {cfg.bits} bits per 16×16 block, "
                       f"entropy-coded (context model); {how}; on {next(model.parameters()).device}")
    return {"name": name, "description": description,
            "results": _mean_results(rows, "iterations", extra=RATES),
            "per_image": rows, "images": [n for n, _ in named], "timing": how}


def raw_codes(result: dict[str, Any]) -> dict[str, Any]:
    """The curve of :func:`evaluate_checkpoint`'s result with the codes stored raw (version 1 files):
    the same reconstructions, so the same quality, at the raw files' bpp (times are the entropy-coded
    files', which include the entropy coder)."""
    swap = {"bpp": "bpp-raw", "bpp-payload": "bpp-payload-raw"}
    r = result["results"]
    return {"name": f"{result['name']} (raw codes)",
            "description": result["description"].replace("entropy-coded (context model)", "raw codes (version 1 files)"),
            "results": {**{k: v for k, v in r.items() if k not in swap.values()}, **{k: r[v] for k, v in swap.items()}},
            "per_image": [{**row, **{k: row[v] for k, v in swap.items()}} for row in result["per_image"]],
            "images": result["images"]}


def evaluate_baseline(key: str, images: Sequence[Any], qualities: Sequence[int] = _baselines.QUALITIES,
                      advance: Callable[[], None] | None = None) -> dict[str, Any]:
    """Rate–distortion of a Pillow baseline (``jpeg``, ``jpeg444``, ``webp``, ``avif``) over a
    quality sweep; same format as :func:`evaluate_checkpoint` with ``quality`` as the point key."""
    (key,) = _baselines.parse_baselines(key)
    named = checked_images(images)
    rows = _baselines.run_baseline(key, named, tuple(qualities), image_metrics_many, advance)
    b = _baselines.BASELINES[key]
    return {"name": b.name, "description": b.description(), "results": _mean_results(rows, "quality"),
            "per_image": rows, "images": [n for n, _ in named], "key": key}


# ---------------------------------------------------------------------------------------------
# Comparisons


def _finite_curve(bpp: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r, v = np.asarray(bpp, float), np.asarray(values, float)
    keep = np.isfinite(r) & np.isfinite(v) & (r > 0)
    r, v = r[keep], v[keep]
    order = np.argsort(r)
    return r[order], v[order]


def bd_rate(anchor: dict[str, Any], test: dict[str, Any], metric: str = "psnr-rgb") -> dict[str, Any]:
    """Bjøntegaard delta rate (%) of ``test`` against ``anchor`` (CompressAI-format dicts) on
    ``metric`` (``psnr-rgb`` or ``ms-ssim-db``), with Akima interpolation over the overlap of
    the two quality ranges (bjontegaard package). Negative means ``test`` needs fewer bits.
    A curve whose quality does not rise strictly with bpp keeps only the points that beat every
    cheaper point (the note says so). Returns ``{"bd_rate": float | None, "overlap": fraction
    of the two quality ranges, "note": str}``."""
    import bjontegaard

    curves = []
    for res in (anchor, test):
        r = res["results"]
        values = r[metric] if metric in r else [ms_ssim_db(v) for v in r["ms-ssim-rgb"]]
        curves.append(_finite_curve(r["bpp"], values))
    notes = []
    for i, ((rate, dist), who) in enumerate(zip(curves, (anchor["name"], test["name"]))):
        if len(rate) and np.any(np.diff(dist) <= 0):  # keep the points that beat every cheaper one
            best = np.maximum.accumulate(dist)
            keep = np.concatenate([[True], dist[1:] > best[:-1]])
            notes.append(f"{who}'s {metric} does not rise strictly with bpp; used the {keep.sum()} of "
                         f"{len(rate)} points that beat every cheaper one")
            curves[i] = (rate[keep], dist[keep])
        if len(curves[i][0]) < 2:
            return {"bd_rate": None, "overlap": 0.0,
                    "note": "; ".join([*notes, f"{who} has fewer than 2 usable points; BD-rate is undefined"])}
    (ra, da), (rt, dt) = curves
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    overlap = max(0.0, hi - lo) / (max(da.max(), dt.max()) - min(da.min(), dt.min()))
    if overlap <= 0:
        return {"bd_rate": None, "overlap": 0.0, "note": "; ".join([*notes, "the quality ranges do not overlap"])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_rate(ra, da, rt, dt, method="akima", require_matching_points=False, min_overlap=0)
    if overlap < 0.75:
        notes.append(f"quality ranges overlap by only {overlap:.0%}; treat with care")
    return {"bd_rate": float(value) if np.isfinite(value) else None, "overlap": float(overlap),
            "note": "; ".join(notes)}


def _line(bpp: np.ndarray, values: np.ndarray, at: float) -> float:
    """The curve's end nearest ``at`` continued to ``at`` along the line through it and the next point
    at a different rate."""
    near = 0 if at < bpp[0] else len(bpp) - 1
    other = np.flatnonzero(bpp != bpp[near])[0 if near == 0 else -1]
    return float(values[near] + (values[other] - values[near]) * (at - bpp[near]) / (bpp[other] - bpp[near]))


def auc_with_note(result: dict[str, Any], metric: str = "ms-ssim-rgb", lo: float = AUC_RANGE[0],
                  hi: float = AUC_RANGE[1], rate: str = "bpp-payload") -> tuple[float | None, str]:
    """Area under ``metric`` against ``rate`` (``bpp-payload`` where present, else ``bpp``) over
    ``lo``..``hi`` bpp, as the paper's Table 2, and a note. A curve that stops short of an end by at
    most ``AUC_EXTRAPOLATION`` of that end (padding puts the first point of 481×321 images at 0.135
    bpp) is continued linearly from its two nearest points, and the note says so; further short, or
    with fewer than two rates, the area is None and the note says why."""
    r = result["results"]
    bpp, values = _finite_curve(r[rate] if rate in r else r["bpp"], r[metric])
    if len(np.unique(bpp)) < 2:
        return None, f"fewer than 2 points with a finite {metric}"
    notes = []
    if bpp[0] > lo + 1e-9:
        if bpp[0] > lo * (1 + AUC_EXTRAPOLATION):
            return None, f"curve starts at {bpp[0]:.3f} bpp, more than {AUC_EXTRAPOLATION:.0%} above {lo:g}"
        notes.append(f"extrapolated from {bpp[0]:.3f} down to {lo:g} bpp")
        bpp, values = np.r_[lo, bpp], np.r_[_line(bpp, values, lo), values]
    if bpp[-1] < hi - 1e-9:
        if bpp[-1] < hi * (1 - AUC_EXTRAPOLATION):
            return None, f"curve ends at {bpp[-1]:.3f} bpp, more than {AUC_EXTRAPOLATION:.0%} below {hi:g}"
        notes.append(f"extrapolated from {bpp[-1]:.3f} up to {hi:g} bpp")
        bpp, values = np.r_[bpp, hi], np.r_[values, _line(bpp, values, hi)]
    return rd_auc(bpp, values, lo, hi), "; ".join(notes)


def auc(result: dict[str, Any], metric: str = "ms-ssim-rgb", lo: float = AUC_RANGE[0],
        hi: float = AUC_RANGE[1], rate: str = "bpp-payload") -> float | None:
    """The area of :func:`auc_with_note`, without its note."""
    return auc_with_note(result, metric, lo, hi, rate)[0]


def _aucs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``auc`` (MS-SSIM and PSNR; None where undefined) and ``auc_notes`` (extrapolation, or why undefined)."""
    pairs = {m: auc_with_note(result, m) for m in ("ms-ssim-rgb", "psnr-rgb")}
    return {"auc": {m: v for m, (v, _) in pairs.items()}, "auc_notes": {m: n for m, (_, n) in pairs.items()}}


def compare(ours: Sequence[dict[str, Any]], baselines: Sequence[dict[str, Any]],
            anchors: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """BD-rates (%) against each baseline on PSNR and MS-SSIM dB, and AUCs over 0.125–2 bpp
    with their notes (:func:`auc_with_note`), for each of ``ours`` and, as references,
    each published curve in ``anchors`` that has both metrics; for each of ours that was entropy
    coded, the saving per point and the BD-rate against its own raw codes."""

    def entry(res: dict[str, Any]) -> dict[str, Any]:
        return {**_aucs(res),
                "bd_rate_percent": {b["name"]: {m: bd_rate(b, res, m) for m in ("psnr-rgb", "ms-ssim-db")}
                                    for b in baselines}}

    def coding(res: dict[str, Any]) -> dict[str, Any]:
        r, raw = res["results"], raw_codes(res)
        return {"raw_curve": raw["name"],
                "saving_percent": [100 * (1 - c / w) for c, w in zip(r["bpp"], r["bpp-raw"])],
                "bd_rate_vs_raw_percent": {m: bd_rate(raw, res, m) for m in ("psnr-rgb", "ms-ssim-db")}}

    return {
        "auc_range_bpp": list(AUC_RANGE),
        "auc_rate": "bpp-payload (code bits only, as the paper's Table 2) where present, else bpp",
        "auc_extrapolation": f"a curve that stops short of a range end by at most {AUC_EXTRAPOLATION:.0%} of it is "
                             "continued linearly from its two nearest points (auc_notes say where)",
        "entropy_coding": {res["name"]: coding(res) for res in ours if "bpp-raw" in res["results"]},
        "bd_rate": "whole-file bpp; Akima interpolation (bjontegaard); negative: fewer bits than the baseline",
        "codecs": {res["name"]: entry(res) for res in ours},
        "baselines": {b["name"]: _aucs(b) for b in baselines},
        "anchors": {a["name"]: entry(a) for a in anchors
                    if all(m in a["results"] for m in ("ms-ssim-rgb", "psnr-rgb"))},
    }
