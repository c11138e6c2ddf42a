"""Results files of an evaluation: CompressAI-format JSON per codec (``{"name", "description",
"results": {"bpp", "psnr-rgb", "ms-ssim-rgb", …}}``), the per-image CSV, and reading such files back
(ours or published)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnncodec.codec.errors import CodecError
from rnncodec.data.files import read_limited, write_atomic


def compressai_json(result: dict[str, Any]) -> dict[str, Any]:
    """The dict written to ``<codec>.json``: CompressAI's keys, without the per-image rows."""
    return {"name": result["name"], "description": result["description"], "results": result["results"]}


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return _json_value(v.item())
    return v


def dumps(obj: Any) -> str:
    """Strict JSON (∞ written as the string "Infinity", NaN as null)."""
    return json.dumps(_json_value(obj), indent=2, allow_nan=False) + "\n"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "codec"


CSV_FIELDS = ("codec", "image", "iterations", "quality", "bytes", "bpp", "bpp-payload", "psnr-rgb",
              "ms-ssim-rgb", "ms-ssim-db", "encoding_time", "decoding_time")


def per_image_csv(results: Sequence[dict[str, Any]]) -> str:
    """One row per codec, image and operating point."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for res in results:
        for row in res["per_image"]:
            writer.writerow({"codec": res["name"], **{k: row.get(k, "") for k in CSV_FIELDS[1:]}})
    return buf.getvalue()


def write_results(out_dir: str | Path, results: Sequence[dict[str, Any]],
                  summary: dict[str, Any] | None = None) -> list[Path]:
    """Write ``<slug(name)>.json`` per codec, ``per_image.csv`` and ``summary.json`` (if given),
    each atomically; returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    for res in results:
        path = out_dir / f"{slug(res.get('key') or res['name'])}.json"
        write_atomic(path, dumps(compressai_json(res)).encode())
        paths.append(path)
    path = out_dir / "per_image.csv"
    write_atomic(path, per_image_csv(results).encode())
    paths.append(path)
    if summary is not None:
        path = out_dir / "summary.json"
        write_atomic(path, dumps(summary).encode())
        paths.append(path)
    return paths


MAX_CURVE_FILE_BYTES = 16 << 20  # a published curve file holds a few dozen points


def read_curve_file(path: Path) -> str:
    """The text of a published curve file: a regular file of at most MAX_CURVE_FILE_BYTES."""
    data = read_limited(path, "curve", MAX_CURVE_FILE_BYTES, "remove it from the anchors", CodecError)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise CodecError(f"{path} is not a readable text file ({exc}); remove it from the anchors") from None


def _number(x: Any) -> float:
    value = float(x) if isinstance(x, (int, float, str)) and not isinstance(x, bool) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"{x!r} is not a finite number")
    return value


def checked_curves(results: Any, where: str) -> dict[str, list[float]]:
    """``results`` of a rate–distortion curve (``bpp`` and metrics, one value per point) as floats sorted
    by rate; CodecError in one line unless there are at least two points, every value is a finite number
    (numbers written as text are read), every rate is positive and every list has one value per rate."""
    if not isinstance(results, dict) or not isinstance(results.get("bpp"), list):
        raise CodecError(f"{where} has no list results.bpp; it is not a CompressAI-format curve")
    try:
        curves = {k: [_number(x) for x in v] for k, v in results.items() if isinstance(v, list)}
    except ValueError as exc:
        raise CodecError(f"{where}: {exc}; every rate and quality must be a finite number") from None
    bpp = curves["bpp"]
    if len(bpp) < 2 or min(bpp) <= 0:
        raise CodecError(f"{where} needs at least two points at positive rates, got bpp {bpp[:5]}")
    for key, values in curves.items():
        if len(values) != len(bpp):
            raise CodecError(f"{where}: {key} has {len(values)} values for {len(bpp)} rates; give one per rate")
    order = np.argsort(bpp, kind="stable")
    return {k: [v[i] for i in order] for k, v in curves.items()}


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a CompressAI-format results JSON (ours or published), its curves checked."""
    path = Path(path)
    try:
        d = json.loads(read_curve_file(path))
    except (ValueError, RecursionError) as exc:
        raise CodecError(f"{path} is not a CompressAI-format results file ({str(exc)[:120]})") from None
    if not isinstance(d, dict):
        raise CodecError(f"{path} is not a CompressAI-format results file (not a JSON object)")
    name, description = d.get("name", path.stem), d.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise CodecError(f"{path}: name and description must be text")
    return {**d, "name": name, "description": description, "results": checked_curves(d.get("results"), str(path))}
