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
from rnncodec.data.files import write_atomic


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


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a CompressAI-format results JSON (ours or published)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        if not isinstance(d.get("results"), dict) or "bpp" not in d["results"]:
            raise ValueError("no results.bpp")
    except (OSError, ValueError, AttributeError) as exc:
        raise CodecError(f"{path} is not a CompressAI-format results file ({exc})") from None
    d.setdefault("name", path.stem)
    d.setdefault("description", "")
    for k, v in d["results"].items():
        if isinstance(v, list):
            d["results"][k] = [float(x) if isinstance(x, str) else x for x in v]
    return d
