"""Rate–distortion figures (PSNR, MS-SSIM and MS-SSIM in dB against bpp) with the published
curves overlaid. Uses matplotlib's object API with the Agg canvas, so it never touches the
global pyplot state or needs a display."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnncodec.codec.errors import CodecError
from rnncodec.codec.metrics import ms_ssim_db
from rnncodec.data.files import write_atomic
from rnncodec.evaluation.results import checked_curves, load_results, read_curve_file

# Known published curve files: file-name prefix → legend label.
ANCHOR_LABELS = {
    "toderici2017": "Toderici 2017 (published)",
    "tf_jpeg420": "JPEG 4:2:0 (published, tf)",
}
_TXT = re.compile(r"(?P<prefix>.+)_(?P<metric>msssim|psnr)_rgb$")
_TXT_METRIC = {"msssim": "ms-ssim-rgb", "psnr": "psnr-rgb"}

DEFAULT_MAX_BPP = 2.25  # the paper's range, 0.125–2 bpp, and a little room

PLOTS = {  # file stem → (metric key, y label)
    "rd_psnr": ("psnr-rgb", "PSNR RGB (dB)"),
    "rd_ms-ssim": ("ms-ssim-rgb", "MS-SSIM RGB"),
    "rd_ms-ssim-db": ("ms-ssim-db", "MS-SSIM RGB (dB, −10·log10(1 − MS-SSIM))"),
}


def _read_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for number, line in enumerate(read_curve_file(path).splitlines(), 1):
        fields = re.split(r"[,\s]+", line.split("#", 1)[0].strip())
        if fields == [""]:
            continue
        if len(fields) < 2:
            raise CodecError(f"{path} line {number}: expected two columns, bpp and value; fix or remove it")
        rows.append(fields[:2])
    curve = checked_curves({"bpp": [r[0] for r in rows], "value": [r[1] for r in rows]}, str(path))
    return np.asarray(curve["bpp"]), np.asarray(curve["value"])


def load_anchors(folder: str | Path) -> list[dict[str, Any]]:
    """Published curves in ``folder``: ``<prefix>_{psnr,msssim}_rgb.txt`` (columns bpp, value)
    and CompressAI results JSONs (in ``folder`` or its ``compressai/``), each as a
    CompressAI-format dict whose ``results`` has ``bpp`` and the metrics it provides (a txt
    pair whose bpp columns differ is kept as two curves)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CodecError(f"no such anchors folder: {folder}; give --anchors DIR with the published curves, "
                         "or leave it out")
    anchors: list[dict[str, Any]] = []
    groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for path in sorted(folder.glob("*.txt")):
        m = _TXT.fullmatch(path.stem)
        if m:
            groups.setdefault(m["prefix"], {})[_TXT_METRIC[m["metric"]]] = _read_txt(path)
    for prefix, curves in groups.items():
        label = ANCHOR_LABELS.get(prefix, f"{prefix} (published)")
        rates = [c[0] for c in curves.values()]
        if all(len(r) == len(rates[0]) and np.allclose(r, rates[0]) for r in rates):
            results = {"bpp": rates[0].tolist(), **{k: v.tolist() for k, (_, v) in curves.items()}}
            anchors.append({"name": label, "description": f"{prefix} from {folder}", "results": results})
        else:
            for metric, (bpp, values) in curves.items():
                anchors.append({"name": label, "description": f"{prefix} from {folder}",
                                "results": {"bpp": bpp.tolist(), metric: values.tolist()}})
    for path in sorted([*folder.glob("*.json"), *folder.glob("compressai/*.json")]):
        d = load_results(path)
        stem = path.stem.lower()
        tag = "ms-ssim" if "ms-ssim" in stem else "mse" if "_mse" in stem else ""
        name = d["name"] + (f" [{tag}]" if tag else "")
        d["name"] = f"{name} (CompressAI)" if path.parent.name == "compressai" else name
        anchors.append(d)
    if not anchors:
        raise CodecError(f"{folder} holds no published curves (*_psnr_rgb.txt, *_msssim_rgb.txt or CompressAI "
                         "JSON files); give --anchors the folder that holds them, or leave it out")
    return anchors


def _values(result: dict[str, Any], metric: str) -> list[float] | None:
    r = result["results"]
    if metric in r:
        return r[metric]
    if metric == "ms-ssim-db" and "ms-ssim-rgb" in r:
        return [ms_ssim_db(v) for v in r["ms-ssim-rgb"]]
    return None


def rd_figure(results: Sequence[dict[str, Any]], anchors: Sequence[dict[str, Any]], metric: str,
              ylabel: str | None = None, max_bpp: float | None = None, title: str | None = None):
    """A matplotlib Figure of ``metric`` against bpp: ``results`` bold with markers, ``anchors``
    thin and dashed. The x axis runs to ``max_bpp`` (default 2.25, the paper's range)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xmax = max_bpp or DEFAULT_MAX_BPP
    bold = matplotlib.colormaps["tab10"].colors
    light = matplotlib.colormaps["tab20b"].colors + matplotlib.colormaps["tab20c"].colors
    lo_y, hi_y = [], []
    for i, res in enumerate(results):
        values = _values(res, metric)
        if values is None:
            continue
        bpp, v = np.asarray(res["results"]["bpp"], float), np.asarray(values, float)
        keep = np.isfinite(v)
        ax.plot(bpp[keep], v[keep], marker="o", markersize=4, linewidth=2, label=res["name"], zorder=3,
                color=bold[i % len(bold)])
        lo_y += list(v[keep & (bpp <= xmax)])
        hi_y += list(v[keep & (bpp <= xmax)])
    for j, a in enumerate(anchors):
        values = _values(a, metric)
        if values is None:
            continue
        bpp, v = np.asarray(a["results"]["bpp"], float), np.asarray(values, float)
        keep = np.isfinite(v) & (bpp <= xmax)
        if keep.any():
            own = a["name"].lower().startswith("toderici")  # the paper this project reproduces
            ax.plot(bpp[keep], v[keep], linestyle="--", linewidth=2 if own else 1.2, label=a["name"], zorder=2,
                    color="black" if own else light[(3 * j) % len(light)])
            lo_y += list(v[keep])
    ax.set_xlim(0, xmax)
    if lo_y:
        lo, hi = float(np.min(lo_y)), float(np.max(lo_y + hi_y))
        pad = 0.03 * (hi - lo or 1)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or "Kodak rate–distortion")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a legend of many curves cannot fit: the figure is drawn anyway
        fig.tight_layout()
    return fig


def rd_plot(results: Sequence[dict[str, Any]], anchors: Sequence[dict[str, Any]] | str | Path | None,
            out: str | Path, title: str | None = None, max_bpp: float | None = None) -> list[Path]:
    """Write ``rd_psnr.png``, ``rd_ms-ssim.png`` and ``rd_ms-ssim-db.png`` into folder ``out``
    (atomically) for CompressAI-format ``results`` (any number: one codec, or the best
    checkpoints of a sweep) over ``anchors`` (dicts, or a folder for :func:`load_anchors`).
    Returns the paths written."""
    if isinstance(anchors, (str, Path)):
        anchors = load_anchors(anchors)
    anchors = list(anchors or [])
    paths = []
    for stem, (metric, ylabel) in PLOTS.items():
        fig = rd_figure(results, anchors, metric, ylabel, max_bpp=max_bpp, title=title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        path = Path(out) / f"{stem}.png"
        write_atomic(path, buf.getvalue())
        paths.append(path)
    return paths
