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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from rnncodec.data.errors import RnncodecError
from rnncodec.data.files import check_output_folder, staged_files, write_atomic
from rnncodec.sweeps.analysis import (
    ALIGN,
    ALPHA,
    aligned_values,
    along,
    curve,
    final_values,
    mean_ci,
    order,
    setting_of,
)
from rnncodec.sweeps.spec import Sweep, SweepError
from rnncodec.sweeps.storage import (
    PLAIN,
    TRIALS_FILE,
    checkpoints,
    filesystem,
    is_complete,
    read_json,
    read_state,
    read_sweep_file,
    validations,
)


def _trial_states(fs: pafs.FileSystem, root: str) -> dict[str, dict[str, Any]]:
    try:
        states = read_json(fs, f"{root}/{TRIALS_FILE}")
    except (OSError, ValueError):
        return {}
    if not isinstance(states, dict):
        return {}
    kinds = {"status": str, "failures": int, "error": str, "started": (int, float), "config": dict}
    out = {k: {f: v[f] for f, kind in kinds.items() if isinstance(v.get(f), kind) and not isinstance(v[f], bool)}
           for k, v in states.items() if isinstance(v, dict)}
    for state in out.values():  # Tune's config: plain values, and the grid point as a mapping of them
        state["config"] = {k: v for k, v in state.get("config", {}).items()
                           if (isinstance(v, dict) and all(isinstance(x, PLAIN) for x in v.values())
                               if k == "point" else isinstance(v, PLAIN))}
    return out


def collect(location: str) -> tuple[Sweep, list[dict[str, Any]]]:
    """The sweep and one record per trial: folder, status, failures, when the driver last started it,
    params, repeat, epoch, history, the newest complete checkpoint, ``checkpoints`` (epoch → folder of
    every complete one) and ``damaged`` (checkpoints passed over, and why)."""
    stored = read_sweep_file(location)
    spec = stored["sweep"]
    fs, root = filesystem(location)
    states = _trial_states(fs, root)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    folders = {i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("trial_")}
    trials = []
    for name in sorted(folders | set(states)):
        state = states.get(name, {})
        config = state.get("config", {})  # _trial_states keeps only a mapping of plain values
        record = {"trial": name, "status": state.get("status", "PENDING"), "failures": state.get("failures", 0),
                  "error": state.get("error"), "started": state.get("started"), "config": config, "params": {},
                  "repeat": None, "epoch": 0, "history": [], "checkpoint": None, "checkpoints": {}, "damaged": []}
        for epoch, folder, meta, problem in checkpoints(fs, f"{root}/{name}") if name in folders else []:
            if problem:
                record["damaged"].append(f"{folder}: {problem}")
            if meta is None or not is_complete(fs, folder, meta) or not isinstance(meta.get("history"), list):
                continue  # not a saved epoch
            record["checkpoints"].setdefault(epoch, folder)
            if record["checkpoint"] is None:
                record.update(params=meta.get("params") or {}, repeat=meta.get("repeat"), epoch=epoch,
                              history=[h for h in meta["history"] if isinstance(h, dict)], checkpoint=folder)
        record["diverged"] = next((h.get("epoch") for h in record["history"] if h.get("diverged") is True), None)
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
    from rich.text import Text

    spec, trials = collect(location)
    table = Table(title=f"sweep {spec.name}: {location}")
    for col in ("trial", "state", "epoch", "failures", f"best {spec.metric}", *spec.axes, "repeat"):
        table.add_column(col, justify="left" if col in ("trial", "state") else "right")
    for t in trials:
        b = best(spec, t["history"])
        state = t["status"] if t.get("diverged") is None else f"{t['status']}, diverged"
        cells = (t["trial"], state, f"{t['epoch']}/{spec.fixed['epochs']}", str(t["failures"]),
                 "-" if b is None else f"{b:.4f}", *(str(t["params"].get(a, "?")) for a in spec.axes), str(t["repeat"]))
        table.add_row(*map(Text, cells))  # as written, never read as rich markup
    return table, spec, trials


# --------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _label(spec: Sweep, params: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{a}={_fmt(params.get(a))}" for a in spec.axes if a not in skip) or spec.name


def rows(spec: Sweep, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial and validation: every epoch end (``probe`` 0) and every probe between them
    (``probe`` 1, at a fractional epoch), with the trial, status, repeat and axis values, then every
    metric."""
    out = []
    for t in trials:
        last = t["history"][-1] if t["history"] else {}
        steps_per_epoch = last.get("steps", 1) / max(last.get("epoch", 1), 1)
        for v in validations(t["history"]):
            row = {"trial": t["trial"], "status": t["status"], "repeat": t["repeat"],
                   **{a: t["params"].get(a) for a in spec.axes}, "probe": int("epoch" not in v)}
            row.update({k: x for k, x in v.items() if k not in row and k != "probes"})
            if row["probe"]:  # its fractional epoch: every epoch has the same number of steps
                row["epoch"] = round(v["steps"] / steps_per_epoch, 4)
            out.append(row)
    return out


def _save_figure(path: Path, fig: Any) -> None:
    """A matplotlib Figure as PNG, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png", bbox_inches="tight")
    write_atomic(path, buf.getvalue())


X_LABELS = {"epoch": "epoch", "steps": "optimizer steps", "samples_seen": "samples seen"}


def _panels(spec: Sweep, trials: list[dict[str, Any]], axis: str) -> dict[str, list[dict[str, Any]]]:
    """Trials grouped by the values of the axes other than ``axis`` (one group when there are none)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        groups.setdefault(_label(spec, t["params"], skip=(axis,)), []).append(t)
    return dict(sorted(groups.items(), key=lambda kv: order(setting_of(spec, kv[1][0]["params"], axis))))


def _levels(trials: list[dict[str, Any]], axis: str) -> list[Any]:
    return sorted({t["params"].get(axis) for t in trials}, key=order)


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    return [colormaps["viridis"](i / max(n - 1, 1) * 0.9) for i in range(n)]


def _curves_figure(path: Path, spec: Sweep, trials: list[dict[str, Any]], axis: str, x: str) -> None:
    """The metric against epochs, steps or samples seen: one line per level of ``axis`` (mean and 95%
    band across repeats at each validation), one panel per setting of the other axes."""
    from matplotlib.figure import Figure

    panels = _panels(spec, trials, axis)
    levels = _levels(trials, axis)
    cols = min(3, len(panels))
    rows_ = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols + 0.6, 3.3 * rows_ + 0.3))
    axes = fig.subplots(rows_, cols, squeeze=False, sharey=True).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, group) in zip(axes, panels.items()):
        for level, colour in zip(levels, _colours(len(levels))):
            series: dict[float, list[float]] = {}
            for t in group:
                if t["params"].get(axis) != level:
                    continue
                if x == "epoch":
                    points = [(h["epoch"], h[spec.metric]) for h in t["history"] if isinstance(h.get(spec.metric), (int, float))]
                else:
                    points = [(p[0] if x == "steps" else p[1], p[2]) for p in curve(t, spec.metric)]
                for px, v in points:
                    series.setdefault(px, []).append(v)
            if not series:
                continue
            xs = sorted(series)
            stats_ = [mean_ci(series[px]) for px in xs]
            ms = [m for m, _, _ in stats_]
            hs = [0.0 if math.isnan(h) else h for _, _, h in stats_]
            ax.plot(xs, ms, marker="o" if x == "epoch" else None, ms=3, color=colour, label=f"{axis}={_fmt(level)}")
            ax.fill_between(xs, [m - h for m, h in zip(ms, hs)], [m + h for m, h in zip(ms, hs)], color=colour, alpha=0.2)
        if x != "epoch":
            ax.set_xscale("log")
        ax.set_xlabel(X_LABELS[x])
        ax.set_title(title if title != spec.name else "", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(spec.metric)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: {spec.metric} against {X_LABELS[x]} by {axis} (mean, 95% band across repeats)",
                 fontsize=10)
    fig.tight_layout()
    _save_figure(path, fig)


def _views(spec: Sweep, trials: list[dict[str, Any]], axis: str) -> list[tuple[str, dict[str, float], str]]:
    """(title, trial → value, how the values were read) of each comparison along ``axis``: at the last
    epoch, and where the axis changes the steps or samples of an epoch, at equal steps or samples."""
    views = [(f"equal epochs ({spec.fixed['epochs']})", final_values(spec, trials), "")]
    if axis in ALIGN:
        key = ALIGN[axis]
        values, common = aligned_values(spec, trials, axis, key)
        note = (f"Each trial's curve (validations at epoch ends and probes) is read at the most {X_LABELS[key]} "
                "that every level reached: "
                + "; ".join(f"{', '.join(f'{a}={_fmt(v)}' for a, v in k) or 'all'}: {x:,}"
                            for k, x in sorted(common.items(), key=lambda kv: order(kv[0]))) + ".")
        views.append((f"equal {X_LABELS[key]}", values, note))
    return views


def _levels_figure(path: Path, spec: Sweep, trials: list[dict[str, Any]], axis: str) -> None:
    """The compared metric against the levels of ``axis`` (mean ± 95% CI across repeats), one line per
    setting of the other axes, one panel per way of comparing (equal epochs, steps or samples)."""
    from matplotlib.figure import Figure

    views = _views(spec, trials, axis)
    fig = Figure(figsize=(4.6 * len(views) + 0.6, 3.6))
    panels = fig.subplots(1, len(views), squeeze=False)[0]
    numeric = all(isinstance(v, (int, float)) and v > 0 for v in _levels(trials, axis))
    for ax, (title, values, _) in zip(panels, views):
        shapes = along(spec, trials, values, axis)
        for s, colour in zip(shapes, _colours(len(shapes))):
            xs = [lv[0] if numeric else str(lv[0]) for lv in s["levels"]]
            ax.errorbar(xs, [lv[1] for lv in s["levels"]], yerr=[0 if math.isnan(lv[3]) else lv[3] for lv in s["levels"]],
                        marker="o", ms=4, capsize=3, color=colour,
                        label=", ".join(f"{a}={_fmt(v)}" for a, v in s["setting"]) or spec.name)
        if numeric:
            ax.set_xscale("log", base=2)
            ax.set_xticks(_levels(trials, axis), [_fmt(v) for v in _levels(trials, axis)])
        ax.set_xlabel(axis)
        ax.set_title(f"at {title}", fontsize=9)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel(spec.metric)
    panels[0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: {spec.metric} by {axis} (mean ± 95% CI across repeats)", fontsize=10)
    fig.tight_layout()
    _save_figure(path, fig)


def best_checkpoint(spec: Sweep, trial: dict[str, Any]) -> tuple[float, str] | None:
    """The sweep metric and folder of the trial's best stored checkpoint (Tune keeps the best ones by
    that metric, and the newest); never one whose epoch diverged, whose weights are NaN."""
    values = {h.get("epoch"): h.get(spec.metric) for h in trial["history"] if h.get("diverged") is not True}
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


def _rd_curves(out: Path, spec: Sweep, trials: list[dict[str, Any]], fs: pafs.FileSystem,
               named: list[tuple[str, Any]], anchors: str | Path | None) -> list[str]:
    """Rate–distortion of each configuration's best checkpoint on ``named`` images (e.g. Kodak), through
    the same code as ``rnncodec eval``, drawn over the published curves in ``anchors``."""
    from rnncodec.codec.checkpoint import model_from_state
    from rnncodec.evaluation import plots as rd_plots
    from rnncodec.evaluation import rd as evaluation

    results = []
    for label, (t, folder) in sorted(best_per_configuration(spec, trials).items())[:8]:
        model = model_from_state(read_state(fs, folder)["model"], folder)
        name = label.replace("\n", " ")
        results.append(evaluation.evaluate_checkpoint(model, named, f"1-{t['params']['iterations']}", name=name,
                                                      description=f"best repeat of {name}", timing="prefix"))
    return [p.name for p in rd_plots.rd_plot(results, anchors, out, title=f"{spec.name}: best checkpoints")]


PHOTO_SIDE = 384  # reconstructions.png shows the held-out photograph's centre, at most this many pixels a side
PHOTO_PANELS = 8


def _reconstructions(path: Path, spec: Sweep, trials, data_location: str, fs: pafs.FileSystem,
                     count: int = 8) -> list[str]:
    """Per configuration (its best repeat's best checkpoint), reconstructions of held-out data: of the
    first validation photograph through the real codec (``compress_progressive`` of its centre), beside
    the bundled model's for reference, when the data are photographs, else of ``count`` validation images
    (CIFAR's are whole images). Returns one caption per panel; none when no figure was drawn."""
    from rnncodec.data.photos import held_out_photos
    from rnncodec.data.remote import resolve
    from rnncodec.data.shards import read_manifest

    chosen = [(label, t["params"]["iterations"], folder)
              for label, (t, folder) in sorted(best_per_configuration(spec, trials).items())]
    try:
        photos = held_out_photos(read_manifest(resolve(data_location)))
    except RnncodecError:
        return []
    if photos:
        return _photo_figure(path, photos[0], chosen[: PHOTO_PANELS - 2], fs)
    return _patch_figure(path, chosen[:12], data_location, count, fs)


def _models(chosen: list[tuple[str, int, str]], fs: pafs.FileSystem) -> Iterator[tuple[str, int, Any]]:
    """(label, iterations, model) of each readable checkpoint, loaded one at a time."""
    from rnncodec.codec.checkpoint import model_from_state

    for label, iterations, folder in chosen:
        try:
            model = model_from_state(read_state(fs, folder)["model"], folder)
        except RnncodecError:
            continue
        yield label, iterations, model


def _photo_figure(path: Path, photo: tuple[str, Any], chosen: list[tuple[str, int, str]],
                  fs: pafs.FileSystem) -> list[str]:
    from matplotlib.figure import Figure

    from rnncodec.codec.bitstream import compress_progressive
    from rnncodec.codec.checkpoint import load_checkpoint
    from rnncodec.codec.metrics import psnr
    from rnncodec.evaluation.rd import center_crop, file_bpp

    name, image = photo
    crop = center_crop(image, PHOTO_SIDE)
    pixels = crop.shape[0] * crop.shape[1]

    def panel(label: str, model: Any, iterations: int) -> tuple[str, Any]:
        data, recs = compress_progressive(model, crop, iterations)
        return (f"{label}\n{iterations} iterations: {file_bpp(data, pixels):.3f} bpp, {psnr(crop, recs[-1]):.1f} dB",
                recs[-1])

    panels = [(f"held-out photograph {name}\n(original, centre {crop.shape[1]}×{crop.shape[0]})", crop)]
    panels += [panel(label.replace(", ", "\n"), model, iterations) for label, iterations, model in _models(chosen, fs)]
    if len(panels) == 1:
        return []
    # what the same codec gives once trained for hours: short trials' colour blotches are not the codec's limit
    try:
        reference = load_checkpoint()
    except RnncodecError:  # a damaged installation: the figure without it
        reference = None
    if reference is not None:
        iterations = max(it for _, it, _ in chosen)
        panels.append(panel("for reference: the bundled model\n(hours of training, codec/pretrained)", reference, iterations))
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    h, w = crop.shape[:2]
    fig = Figure(figsize=(columns * w / 100, rows * (h / 100 + 0.6)))
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes:
        ax.set_axis_off()
    for ax, (title, shown) in zip(axes, panels):
        ax.imshow(shown, interpolation="nearest")
        ax.set_title(title, fontsize=7)
    _save_figure(path, fig)
    return [title.replace("\n", " ") for title, _ in panels]


def _patch_figure(path: Path, chosen: list[tuple[str, int, str]], data_location: str, count: int,
                  fs: pafs.FileSystem) -> list[str]:
    import torch
    from matplotlib.figure import Figure

    from rnncodec.codec.options import BPP_PER_ITERATION
    from rnncodec.codec.training import evaluate
    from rnncodec.data.images import image_grid
    from rnncodec.data.reader import open_split
    from rnncodec.sweeps.trainable import spread

    try:
        with open_split(data_location, "val", verify_sha256=False) as reader:
            pixels = torch.from_numpy(reader.images(spread(count, len(reader))))
    except RnncodecError:
        return []
    labels, rows_ = ["original"], [pixels.numpy()]
    for label, iterations, model in _models(chosen, fs):
        recon = evaluate(model, pixels, iterations, keep=count)["reconstructions"]
        labels.append(f"{label.replace(', ', chr(10))}\n{BPP_PER_ITERATION * iterations:g} bpp")
        rows_.append(recon[-1].numpy())
    if len(rows_) == 1:
        return []
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
    return [label.replace("\n", " ") for label in labels]


def _question(spec: Sweep, trials: list[dict[str, Any]], axis: str, title: str, values: dict[str, float],
              note: str = "") -> list[str]:
    """Markdown for one question: the levels of ``axis`` at each setting of the other axes (mean ± 95%
    CI), the verdict on its shape, and every pair with Welch's and Holm's p."""
    shapes = along(spec, trials, values, axis)
    if not shapes:
        return []
    levels = _levels(trials, axis)
    pairs = sum(len(s["pairs"]) for s in shapes)
    lines = [f"## {axis} at {title}", "", *([note, ""] if note else []),
             f"| {' / '.join(a for a in spec.axes if a != axis) or 'setting'} | "
             + " | ".join(f"{axis}={_fmt(v)}" for v in levels) + " | verdict |",
             "|---|" + "---:|" * len(levels) + "---|"]
    for s in shapes:
        cells = {lv[0]: f"{lv[1]:.4f} ± {lv[3]:.4f} (n={lv[4]})" if not math.isnan(lv[3]) else f"{lv[1]:.4f} (n={lv[4]})"
                 for lv in s["levels"]}
        name = ", ".join(f"{a}={_fmt(v)}" for a, v in s["setting"]) or "all"
        lines.append(f"| {name} | " + " | ".join(cells.get(v, "–") for v in levels) + f" | {s['verdict']} |")
    lines += ["", (f"Pairs: Welch's t-test, Holm-adjusted over the {pairs} pairs of this question; **bold** where "
                   f"the difference is beyond the seed-to-seed spread (Holm p < {ALPHA:g})."), ""]
    for s in shapes:
        where = ", ".join(f"{a}={_fmt(v)}" for a, v in s["setting"])
        for p in s["pairs"]:
            text = (f"{axis} {_fmt(p['a'])} vs {_fmt(p['b'])}" + (f" at {where}" if where else "")
                    + f": Δ = {p['delta']:+.4f}, p = {p['p']:.3g}, Holm p = {p['p_holm']:.3g}")
            lines.append(f"- **{text}**" if p["p_holm"] < ALPHA else f"- {text}")
    return [*lines, ""]


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def run_facts(trials: list[dict[str, Any]], wandb_runs: int | None = None) -> list[str]:
    """Markdown bullets on how the sweep ran: trial outcomes and retries, the span from the first trial's
    start to the last epoch's end, trials per hour, where the trials' time went, W&B runs written."""
    lasts = [t["history"][-1] for t in trials if t["history"]]
    statuses = [t["status"] for t in trials]
    diverged = sum(t.get("diverged") is not None for t in trials)
    lines = [f"- trials: {statuses.count('TERMINATED')} finished"
             + (f" ({diverged} of them stopped when they diverged)" if diverged else "")
             + f", {statuses.count('ERROR')} errored, "
             f"{len(trials) - statuses.count('TERMINATED') - statuses.count('ERROR')} other; retries after a "
             f"failure: {sum(int(t['failures'] or 0) for t in trials)}"
             + "".join(f"\n  - {t['trial']}: {t['error']}" for t in trials if t.get("error"))]
    starts = [t["started"] for t in trials if isinstance(t.get("started"), (int, float))]
    ends = [h["epoch_end_at"] for h in lasts if isinstance(h.get("epoch_end_at"), (int, float))]
    busy = sum(float(h.get("wall_time", 0)) for h in lasts)
    if starts and ends and max(ends) > min(starts):
        span = max(ends) - min(starts)
        lines.append(f"- span (first trial's start to last epoch's end): {_duration(span)}; "
                     f"{statuses.count('TERMINATED') / span * 3600:.1f} finished trials per hour; "
                     f"{busy / span:.2f} trials running on average")
    if busy:
        train = sum(float(h.get("train_time", 0)) for h in lasts)
        setup = sum(float(h.get("setup_time", 0)) for h in lasts)
        wandb_ = sum(float(h.get("wandb_time", 0)) for h in lasts)
        lines.append(f"- time inside trials: {_duration(busy)}; training steps {train / busy:.0%}, start-up (data, "
                     f"model, W&B init) {setup / busy:.0%}, the rest (validation and probes, checkpoints, W&B "
                     f"logging) {max(busy - train - setup, 0) / busy:.0%}; W&B init and logging together "
                     f"{wandb_ / busy:.0%}")
    if wandb_runs is not None:
        lines.append(f"- W&B runs written: {wandb_runs}")
    return lines


def summary_markdown(spec: Sweep, trials: list[dict[str, Any]], figures: list[str],
                     wandb_runs: int | None = None, reconstructions: Sequence[str] = ()) -> str:
    """Configurations ranked by the last epoch's metric (mean ± 95% CI over repeats), then per axis:
    its levels compared at equal epochs (and at equal steps or samples where the axis changes them),
    with a verdict on the shape and Holm-corrected pairwise tests; ``reconstructions``: the captions of
    reconstructions.png's panels."""
    finals = final_values(spec, trials)
    configs: dict[str, list[float]] = {}
    for t in trials:
        configs.setdefault(_label(spec, t["params"]), []).extend([finals[t["trial"]]] if t["trial"] in finals else [])
    stats_ = {k: (*mean_ci(v), len(v)) for k, v in configs.items()}
    diverged = [f"{t['trial']} in epoch {t['diverged']}" for t in trials if t.get("diverged") is not None]
    stopped = f" Diverged and stopped (a non-finite training loss; left out of the means): {', '.join(diverged)}." if diverged else ""
    lines = [f"# Sweep {spec.name}", "", spec.description or "", "",
             (f"{len(trials)} trials ({len(finals)} completed all {spec.fixed['epochs']} epochs), {spec.repeats} "
              f"repeats per configuration. Metric: {spec.metric} ({spec.mode}); mean ± 95% confidence half-width "
              f"across repeats (Student t).{stopped}"), "", "## Configurations at the last epoch", "",
             "| configuration | n | mean | sd | ±95% |", "|---|---:|---:|---:|---:|"]
    ranked = sorted(stats_, key=lambda k: (math.isnan(stats_[k][0]), -stats_[k][0] if spec.mode == "max" else stats_[k][0]))
    for k in ranked:
        m, sd, h, n = stats_[k]
        lines.append(f"| {k} | {n} | {m:.4f} | {sd:.4f} | {h:.4f} |")
    lines.append("")
    for axis in spec.axes:
        for title, values, note in _views(spec, trials, axis):
            lines += _question(spec, trials, axis, title, values, note)
    lines += ["## Run", "", *run_facts(trials, wandb_runs), "", "## Files", "",
              "- results.csv: one row per trial and validation (epoch ends; probes between them)",
              *(f"- {f}" for f in figures), ""]
    if reconstructions:
        lines += ["## reconstructions.png", "", *(f"- {c}" for c in reconstructions), ""]
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
    check_output_folder(out)
    table = rows(spec, trials)
    if not table:
        raise SweepError(f"{location} has no completed epoch yet; wait for the first checkpoints or resume the sweep")
    named = _checked_images(images, limit) if images is not None else None  # before any long work
    with staged_files(out) as stage:
        figures = _write_report(stage, location, spec, trials, table, stored, named, anchors)
    return {"out": str(out), "rows": len(table), "figures": figures, "damaged": damaged(trials)}


def damaged(trials: list[dict[str, Any]]) -> list[str]:
    """The checkpoints :func:`collect` passed over as damaged, each with why."""
    return [note for t in trials for note in t["damaged"]]


def _checked_images(images: str | Path, limit: int | None) -> list[tuple[str, Any]]:
    from rnncodec.evaluation import rd as evaluation

    return evaluation.checked_images(evaluation.load_images(images, limit=limit))


def _write_report(out: Path, location: str, spec: Sweep, trials: list[dict[str, Any]], table: list[dict[str, Any]],
                  stored: dict[str, Any], named: list[tuple[str, Any]] | None, anchors: str | Path | None) -> list[str]:
    columns: list[str] = []
    for r in table:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    write_atomic(out / "results.csv", buf.getvalue())
    figures = []
    for axis in list(spec.axes)[:3]:
        for x in ("epoch", *([ALIGN[axis]] if axis in ALIGN else [])):
            name = f"curves_by_{axis}.png" if x == "epoch" else f"curves_by_{axis}_vs_{x}.png"
            _curves_figure(out / name, spec, trials, axis, x)
            figures.append(name)
        _levels_figure(out / f"final_by_{axis}.png", spec, trials, axis)
        figures.append(f"final_by_{axis}.png")
    fs, _ = filesystem(location)
    captions = _reconstructions(out / "reconstructions.png", spec, trials, stored["context"]["data"], fs)
    if captions:
        figures.append("reconstructions.png")
    if named is not None:
        figures += _rd_curves(out, spec, trials, fs, named, anchors)
    runs = Path(location, "wandb", "wandb")
    text = summary_markdown(spec, trials, figures,
                            len(list(runs.glob("*run-*"))) if "://" not in location and runs.is_dir() else None,
                            captions)
    write_atomic(out / "summary.md", text)
    return figures


__all__ = ["collect", "damaged", "status_table", "summary_markdown", "write_report"]
