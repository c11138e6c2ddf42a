"""What a sweep folder holds: trial status (the driver's ``trials.json`` and each trial's checkpoints)
and the report (results CSV, PNG figures in the style of the study, markdown summary).

Per-epoch metrics are read from the ``meta.json`` of each trial's newest checkpoint, which carries
the trial's whole history: it is complete after any resume (Tune's own ``result.json`` is written by
the driver and may miss the last epochs before a crash, or repeat some after a resume).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from rnncodec.data.errors import RnncodecError
from rnncodec.data.files import write_atomic
from rnncodec.sweeps.spec import Sweep, SweepError
from rnncodec.sweeps.storage import (
    TRIALS_FILE,
    checkpoints,
    filesystem,
    is_complete,
    read_json,
    read_state,
    read_sweep_file,
)


def _trial_states(fs: pafs.FileSystem, root: str) -> dict[str, dict[str, Any]]:
    try:
        states = read_json(fs, f"{root}/{TRIALS_FILE}")
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in states.items() if isinstance(v, dict)} if isinstance(states, dict) else {}


def collect(location: str) -> tuple[Sweep, list[dict[str, Any]]]:
    """The sweep and one record per trial: folder, status, failures, when the driver last started it,
    params, repeat, epoch, history, the newest complete checkpoint and ``checkpoints`` (epoch → folder of
    every complete one)."""
    stored = read_sweep_file(location)
    spec = Sweep.from_dict(stored["spec"])
    fs, root = filesystem(location)
    states = _trial_states(fs, root)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    folders = {i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("trial_")}
    trials = []
    for name in sorted(folders | set(states)):
        state = states.get(name, {})
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        record = {"trial": name, "status": state.get("status", "PENDING"), "failures": state.get("failures", 0),
                  "error": state.get("error"), "started": state.get("started"), "config": config, "params": {},
                  "repeat": None, "epoch": 0, "history": [], "checkpoint": None, "checkpoints": {}}
        for epoch, folder, meta in checkpoints(fs, f"{root}/{name}") if name in folders else []:
            if meta is None or not is_complete(fs, folder, meta) or not isinstance(meta.get("history"), list):
                continue  # not a saved epoch
            record["checkpoints"].setdefault(epoch, folder)
            if record["checkpoint"] is None:
                record.update(params=meta.get("params") or {}, repeat=meta.get("repeat"), epoch=epoch,
                              history=[h for h in meta["history"] if isinstance(h, dict)], checkpoint=folder)
        if not record["params"]:
            record["params"] = spec.trial_params(config)
            record["repeat"] = config.get("repeat")
        trials.append(record)
    return spec, trials


def best(spec: Sweep, history: list[dict[str, Any]]) -> float | None:
    values = [h[spec.metric] for h in history if isinstance(h.get(spec.metric), (int, float))]
    if not values:
        return None
    return max(values) if spec.mode == "max" else min(values)


def status_table(location: str):
    """A rich Table of the sweep's trials: state, epoch of total, failures, best metric, axis values."""
    from rich.table import Table

    spec, trials = collect(location)
    table = Table(title=f"sweep {spec.name}: {location}")
    for col in ("trial", "state", "epoch", "failures", f"best {spec.metric}", *spec.axes, "repeat"):
        table.add_column(col, justify="left" if col in ("trial", "state") else "right")
    for t in trials:
        b = best(spec, t["history"])
        table.add_row(t["trial"], t["status"], f"{t['epoch']}/{spec.fixed['epochs']}", str(t["failures"]),
                      "-" if b is None else f"{b:.4f}", *(str(t["params"].get(a, "?")) for a in spec.axes),
                      str(t["repeat"]))
    return table, spec, trials


# --------------------------------------------------------------------------- report


def _t95(n: int) -> float:
    """Two-sided 95% Student-t quantile for n − 1 degrees of freedom."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
    df = n - 1
    if df < 1:
        return float("nan")
    for k in sorted(table):
        if df <= k:
            return table[k]
    return 1.96


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and 95% confidence half-width (nan when n < 2)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, sd, _t95(n) * sd / math.sqrt(n)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _label(spec: Sweep, params: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{a}={_fmt(params.get(a))}" for a in spec.axes if a not in skip) or spec.name


def rows(spec: Sweep, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial and epoch: trial, status, repeat, the axis values, then every metric."""
    out = []
    for t in trials:
        for h in t["history"]:
            row = {"trial": t["trial"], "status": t["status"], "repeat": t["repeat"],
                   **{a: t["params"].get(a) for a in spec.axes}}
            row.update({k: v for k, v in h.items() if k not in row})
            out.append(row)
    return out


def _curves(spec, trials, axis, metric, epochs):
    """value of ``axis`` → (epochs, mean, half-width) of ``metric`` pooled over repeats and other axes."""
    groups: dict[Any, list[list[float]]] = {}
    for t in trials:
        by_epoch = {h["epoch"]: h.get(metric) for h in t["history"]}
        key = t["params"].get(axis) if axis else _label(spec, t["params"])
        groups.setdefault(key, []).append([by_epoch.get(e) for e in range(1, epochs + 1)])
    out = {}
    for key, series in groups.items():
        xs, ms, hs = [], [], []
        for i in range(epochs):
            vals = [s[i] for s in series if s[i] is not None]
            if vals:
                m, _, h = mean_ci(vals)
                xs.append(i + 1)
                ms.append(m)
                hs.append(0.0 if math.isnan(h) else h)
        out[key] = (xs, ms, hs)
    return out


def _save_figure(path: Path, fig: Any) -> None:
    """A matplotlib Figure as PNG, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png", bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def _figure(path: Path, spec: Sweep, trials, axis: str | None) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = spec.fixed["epochs"]
    fig = Figure(figsize=(11, 4))
    panels = fig.subplots(1, 2)
    for ax, (metric, title) in zip(panels, (("val/ms_ssim", "validation MS-SSIM"), ("val/psnr", "validation PSNR (dB)"))):
        for key, (xs, ms, hs) in sorted(_curves(spec, trials, axis, metric, epochs).items(), key=lambda kv: str(kv[0])):
            if not xs:
                continue
            line, = ax.plot(xs, ms, marker="o", ms=3, label=f"{axis}={_fmt(key)}" if axis else str(key))
            ax.fill_between(xs, [m - h for m, h in zip(ms, hs)], [m + h for m, h in zip(ms, hs)],
                            color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
    panels[0].legend(fontsize=8)
    by = f"by {axis}" if axis else "by configuration"
    fig.suptitle(f"{spec.name}: {by} (mean, 95% band across repeats"
                 f"{' and other axes' if axis and len(spec.axes) > 1 else ''})", fontsize=10)
    fig.tight_layout()
    _save_figure(path, fig)


def best_checkpoint(spec: Sweep, trial: dict[str, Any]) -> tuple[float, str] | None:
    """The sweep metric and folder of the trial's best stored checkpoint (Tune keeps the best ones by
    that metric, and the newest)."""
    values = {h.get("epoch"): h.get(spec.metric) for h in trial["history"]}
    scored = [(values[e], folder) for e, folder in trial["checkpoints"].items()
              if isinstance(values.get(e), (int, float)) and math.isfinite(values[e])]
    if not scored:
        return None
    return max(scored) if spec.mode == "max" else min(scored)


def best_per_configuration(spec: Sweep, trials: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], str]]:
    """Per configuration, the repeat with the best stored checkpoint, and that checkpoint's folder."""
    chosen: dict[str, tuple[float, dict[str, Any], str]] = {}
    for t in trials:
        found = best_checkpoint(spec, t)
        label = _label(spec, t["params"])
        old = chosen.get(label)
        if found is not None and (old is None or (found[0] > old[0]) == (spec.mode == "max")):
            chosen[label] = (found[0], t, found[1])
    return {label: (t, folder) for label, (_, t, folder) in chosen.items()}


def _rd_curves(out: Path, spec: Sweep, trials: list[dict[str, Any]], fs: pafs.FileSystem, images: str | Path,
               anchors: str | Path | None, limit: int | None) -> list[str]:
    """Rate–distortion of each configuration's best checkpoint on ``images`` (e.g. Kodak), through
    the same code as ``rnncodec eval``, drawn over the published curves in ``anchors``."""
    from rnncodec.codec.checkpoint import model_from_state
    from rnncodec.evaluation import plots as rd_plots
    from rnncodec.evaluation import rd as evaluation

    named = evaluation.load_images(images, limit=limit)
    results = []
    for label, (t, folder) in sorted(best_per_configuration(spec, trials).items())[:8]:
        model = model_from_state(read_state(fs, folder)["model"], folder)
        name = label.replace("\n", " ")
        results.append(evaluation.evaluate_checkpoint(model, named, f"1-{t['params']['iterations']}", name=name,
                                                      description=f"best repeat of {name}", timing="prefix"))
    return [p.name for p in rd_plots.rd_plot(results, anchors, out, title=f"{spec.name}: best checkpoints")]


def _reconstructions(path: Path, spec: Sweep, trials, data_location: str, fs: pafs.FileSystem, count: int = 8) -> bool:
    """Originals and, per configuration (its best repeat's best checkpoint), reconstructions."""
    import torch
    from matplotlib.figure import Figure

    from rnncodec.codec.checkpoint import model_from_state
    from rnncodec.codec.options import BPP_PER_ITERATION
    from rnncodec.codec.training import evaluate
    from rnncodec.data.images import image_grid
    from rnncodec.data.reader import open_split
    from rnncodec.sweeps.trainable import spread

    chosen = best_per_configuration(spec, trials)
    try:
        with open_split(data_location, "val", verify_sha256=False) as reader:
            pixels = torch.from_numpy(reader.images(spread(count, len(reader))))
    except RnncodecError:
        return False
    labels, rows_ = ["original"], [pixels.numpy()]
    for label, (t, folder) in sorted(chosen.items())[:12]:
        try:
            model = model_from_state(read_state(fs, folder)["model"], folder)
        except RnncodecError:
            continue
        recon = evaluate(model, pixels, t["params"]["iterations"], keep=count)["reconstructions"]
        labels.append(f"{label.replace(', ', chr(10))}\n{BPP_PER_ITERATION * t['params']['iterations']:g} bpp")
        rows_.append(recon[-1].numpy())
    if len(rows_) == 1:
        return False
    scale, pad = 4, 2
    grid = image_grid(rows_, scale=scale, pad=pad)
    fig = Figure(figsize=(grid.shape[1] / 100 + 2.5, grid.shape[0] / 100 + 0.3))
    ax = fig.add_axes((2.4 / (grid.shape[1] / 100 + 2.5), 0, 1 - 2.4 / (grid.shape[1] / 100 + 2.5), 1))
    ax.imshow(grid, interpolation="nearest")
    step = pixels.shape[2] * scale + pad
    ax.set_yticks([pad + step * r + step / 2 for r in range(len(labels))], labels, fontsize=7)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    _save_figure(path, fig)
    return True


def _final(spec: Sweep, t: dict[str, Any]) -> float | None:
    h = [x for x in t["history"] if x.get("epoch") == spec.fixed["epochs"]]
    v = h[-1].get(spec.metric) if h else None
    return v if isinstance(v, (int, float)) else None


def summary_markdown(spec: Sweep, trials: list[dict[str, Any]], figures: list[str]) -> str:
    """Configurations ranked by the final metric (mean ± 95% CI over repeats), and which differences
    between configurations that differ in one axis exceed the seed-to-seed spread."""
    configs: dict[str, dict[str, Any]] = {}
    for t in trials:
        v = _final(spec, t)
        c = configs.setdefault(_label(spec, t["params"]), {"params": t["params"], "values": []})
        if v is not None:
            c["values"].append(v)
    stats = {k: (*mean_ci(c["values"]), len(c["values"])) for k, c in configs.items()}
    done = sum(1 for t in trials if _final(spec, t) is not None)
    lines = [f"# Sweep {spec.name}", "", spec.description or "", "",
             f"{len(trials)} trials ({done} completed all {spec.fixed['epochs']} epochs), {spec.repeats} repeats per "
             f"configuration. Metric: final-epoch {spec.metric} ({spec.mode}); mean ± 95% confidence half-width "
             "across repeats (Student t).", "", "| configuration | n | mean | sd | ±95% |", "|---|---:|---:|---:|---:|"]
    order = sorted(stats, key=lambda k: (math.isnan(stats[k][0]), -stats[k][0] if spec.mode == "max" else stats[k][0]))
    for k in order:
        m, sd, h, n = stats[k]
        lines.append(f"| {k} | {n} | {m:.4f} | {sd:.4f} | {h:.4f} |")
    lines += ["", "## Differences against the seed-to-seed spread", "",
              "Pairs of configurations that differ in one axis only. A difference counts as larger than the "
              "seed-to-seed spread when |Δ| exceeds the 95% half-width of the difference of means "
              "(Welch, t quantile of the smaller sample).", ""]
    found = 0
    keys = list(configs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            pa_, pb = configs[a]["params"], configs[b]["params"]
            differ = [x for x in spec.axes if pa_.get(x) != pb.get(x)]
            if len(differ) != 1:
                continue
            (ma, sa, _, na), (mb, sb, _, nb) = stats[a], stats[b]
            if min(na, nb) < 2 or math.isnan(sa) or math.isnan(sb):
                verdict = "not testable (fewer than 2 completed repeats)"
            else:
                half = _t95(min(na, nb)) * math.sqrt(sa**2 / na + sb**2 / nb)
                larger = abs(ma - mb) > half
                verdict = (f"**larger** than the spread (Δ = {ma - mb:+.4f}, ±{half:.4f})" if larger
                           else f"within the spread (Δ = {ma - mb:+.4f}, ±{half:.4f})")
            x = differ[0]
            others = _label(spec, pa_, skip=(x,))
            lines.append(f"- {x} {_fmt(pa_.get(x))} vs {_fmt(pb.get(x))}" + (f" at {others}" if others != spec.name else "")
                         + f": {verdict}")
            found += 1
    if not found:
        lines.append("- no pairs of configurations differing in a single axis")
    lines += ["", "## Files", "", "- results.csv: one row per trial and epoch", *(f"- {f}" for f in figures), ""]
    return "\n".join(lines)


def write_report(location: str, out: str | Path | None = None, images: str | Path | None = None,
                 anchors: str | Path | None = None, limit: int | None = None) -> dict[str, Any]:
    """Write results.csv, figures and summary.md into ``out`` (default: ``report/`` of a local sweep);
    with ``images`` (e.g. Kodak) also rate–distortion plots of each configuration's best checkpoint."""
    spec, trials = collect(location)
    stored = read_sweep_file(location)
    if out is None:
        if "://" in location:
            raise SweepError("the sweep is on remote storage; give --out FOLDER for the report")
        out = Path(location) / "report"
    out = Path(out)
    table = rows(spec, trials)
    if not table:
        raise SweepError(f"{location} has no completed epoch yet; wait for the first checkpoints or resume the sweep")
    columns: list[str] = []
    for r in table:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    write_atomic(out / "results.csv", buf.getvalue())
    figures = []
    first = [a for a in ("batch_size", "train_size") if a in spec.axes]
    axes = ([*first, *(a for a in spec.axes if a not in first)][:3]) or [None]
    for a in axes:
        name = f"curves_by_{a}.png" if a else "curves.png"
        _figure(out / name, spec, trials, a)
        figures.append(name)
    fs, _ = filesystem(location)
    if _reconstructions(out / "reconstructions.png", spec, trials, stored["context"]["data"], fs):
        figures.append("reconstructions.png")
    if images is not None:
        figures += _rd_curves(out, spec, trials, fs, images, anchors, limit)
    text = summary_markdown(spec, trials, figures)
    write_atomic(out / "summary.md", text)
    return {"out": str(out), "rows": len(table), "figures": figures}


__all__ = ["collect", "status_table", "write_report", "mean_ci", "summary_markdown"]
