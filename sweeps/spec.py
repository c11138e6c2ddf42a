"""Sweep files: a small validated YAML schema, and the trials it expands to.

A sweep file names fixed training parameters, axes to vary (grid, choice, uniform, log-uniform),
``repeats`` (seeds per configuration), the metric to rank by, the scheduler and search, the resources
of one trial, where results go (a local folder or a pyarrow URI such as ``s3://bucket/sweeps``), how
to log to Weights & Biases, and how to prepare the data. ``load_spec`` checks all of it before Ray
starts and raises :class:`SweepError` with a one-line message that names the key and the fix.

This module imports neither ray nor torch: the runner turns a :class:`Sweep` into Tune objects.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import itertools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rnncodec.codec.options import (
    ACTIVATIONS,
    CELLS,
    LOSSES,
    LOSS_GROWTH_RANGE,
    LR_SCHEDULES,
    MAX_BATCH,
    MAX_GAIN_GROWTH,
    MAX_ITERATIONS,
    MODES,
    OPTIMIZERS,
)
from rnncodec.data.errors import DataError, RnncodecError, shown
from rnncodec.data.files import FileError, read_limited
from rnncodec.data.remote import check_no_secret
from rnncodec.data.sources import CIFAR, SOURCES, check_source


class SweepError(RnncodecError):
    """A problem with a sweep file or a sweep folder, phrased as problem and fix on one line."""


MAX_TRIALS = 10_000  # a sweep file that expands to more is refused before Ray starts
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000  # values a sweep file may hold once its YAML aliases are expanded
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # used with fullmatch: "$" lets "x\n" through


# --------------------------------------------------------------------------- value checks


def _int(lo: int | None = None, hi: int | None = None, none: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and none:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise SweepError(f"{key}: {shown(v)} is not an integer; give a whole number"
                             + (" or null" if none else ""))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise SweepError(f"{key}: {v} is out of range; use a value in {span}")
        return v
    return check


def _float(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
           none: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and none:
            return None
        if isinstance(v, str):
            try:
                v = float(v)  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SweepError(f"{key}: {shown(v)} is not a number; give a finite number" + (" or null" if none else ""))
        v = float(v)
        bad_lo = lo is not None and (v <= lo if open_lo else v < lo)
        if bad_lo or (hi is not None and v > hi):
            left = "(" if open_lo else "["
            span = f"{left}{lo}, {hi}]" if hi is not None else f"{'> ' if open_lo else '>= '}{lo}"
            raise SweepError(f"{key}: {v:g} is out of range; use a value in {span}")
        return v
    return check


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v not in options:
            raise SweepError(f"{key}: {shown(v)} is not allowed; choose one of {', '.join(options)}")
        return v
    return check


def _bool(key: str, v: Any) -> Any:
    if not isinstance(v, bool):
        raise SweepError(f"{key}: {shown(v)} is not true or false; write true or false")
    return v


def _str(none: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and none:
            return None
        if not isinstance(v, str) or not v or len(v) > 4096:
            raise SweepError(f"{key}: {shown(v)} is not a text value; give a non-empty string" + (" or null" if none else ""))
        return v
    return check


# Training parameters: the fixed values and the axes of a sweep draw from these. Defaults are small.
TRAIN: dict[str, tuple[Any, Callable[[str, Any], Any], str]] = {
    "epochs": (3, _int(1, 100_000), "epochs to train; each reports metrics and saves a checkpoint"),
    "steps_per_epoch": (None, _int(1, none=True), "optimizer steps per epoch; null = one full pass"),
    "optimizer": ("adam", _choice(OPTIMIZERS), "optimizer"),
    "lr": (5e-4, _float(0, 10, open_lo=True), "learning rate"),
    "weight_decay": (0.0, _float(0, 1), "weight decay"),
    "lr_schedule": ("none", _choice(LR_SCHEDULES), "none, cosine over the run, or step (÷10 at 2/3 of it)"),
    "loss": ("l1", _choice(LOSSES), "training loss"),
    "loss_growth": (1.0, _float(*LOSS_GROWTH_RANGE), "iteration t's loss term weighs loss_growth^(t-1) (the weights "
                    "sum to the iteration count); 1 = all alike, > 1 favours the late iterations"),
    "iterations": (1, _int(1, MAX_ITERATIONS), "codec iterations, 0.125 bpp each"),
    "cell": ("lstm", _choice(CELLS), "recurrent cell"),
    "reconstruction": ("additive", _choice(MODES), "reconstruction mode"),
    "width": (0.25, _float(0, 8, open_lo=True), "channel multiplier; 1 is the paper's model"),
    "activation": ("none", _choice(ACTIVATIONS), "non-linearity after E-Conv and D-Conv 1"),
    "gain_growth": (1.0, _float(1, MAX_GAIN_GROWTH), "fixed residual scaling: iteration t's residual gain is "
                    "gain_growth^(t-1); 1 = off"),
    "batch_size": (32, _int(1, MAX_BATCH), "images per step"),
    "train_size": (None, _int(1, none=True), "training images used (a fixed nested subset); null = all"),
    "val_size": (256, _int(1, 1 << 20), "validation images evaluated every epoch"),
    "val_probes": (0, _int(0, 16), ("extra validations per doubling of the step count (from step 8) within "
                                    "epochs, for curves at equal steps; 0 = at epoch ends only")),
    "amp": (False, _bool, "bfloat16 autocast (GPUs, CPUs with native bf16)"),
    "grad_clip": (None, _float(0, open_lo=True, none=True), "gradient norm clip; null = none"),
    "deterministic": (False, _bool, "deterministic kernels: GPU trials reproduce bit for bit (slower); "
                      "CPU trials always do"),
    "cuda_graph": (False, _bool, "GPU trials replay each training step as one CUDA graph (adam, adamw); "
                   "ignored on CPUs"),
}

DATA: dict[str, tuple[Any, Callable[[str, Any], Any], str]] = {
    "source": (None, _str(none=True), SOURCES),
    "location": (None, _str(none=True), "an already prepared folder or URI (instead of source)"),
    "root": (None, _str(none=True), "folder holding the CIFAR archives (else downloaded)"),
    "rotations": (1, _int(1, 4), "quarter-turn orientations per training image"),
    "size": (None, _int(1, none=True), "training images drawn from the augmented set; null = all"),
    "seed": (0, _int(0), "seed of the size subset and of train_size's nested subsets"),
    "val_fraction": (0.1, _float(0, 0.99), "photo patches held out (photo sources)"),
    "hard_patches": (None, _int(1, none=True), "hard patches per photo (photo sources)"),
    "cache_dir": (None, _str(none=True), "cache folder (default $RNNCODEC_CACHE or ~/.cache/rnncodec)"),
}

WANDB: dict[str, tuple[Any, Callable[[str, Any], Any], str]] = {
    "project": ("rnncodec", _str(), "W&B project"),
    "group": (None, _str(none=True), "W&B group; null = the sweep name"),
    "entity": (None, _str(none=True), "W&B entity; null = your default"),
    "mode": ("auto", _choice(("auto", "online", "offline", "disabled")),
             "auto: online when logged in, else offline under the sweep folder"),
    "images_every": (2, _int(0), "epochs between reconstruction images; 0 = never"),
    "images": (8, _int(1, 64), "validation images shown"),
}

REAL_VALUED = ("lr", "weight_decay", "width", "grad_clip")
SCHEDULERS = ("fifo", "asha")
SEARCHES = ("grid", "random", "optuna")
KINDS = ("grid", "choice", "uniform", "loguniform")
TOP = ("name", "description", "data", "fixed", "axes", "repeats", "metric", "mode", "search",
       "scheduler", "resources", "concurrency", "storage", "wandb", "max_failures", "keep_checkpoints")
METRIC_RE = re.compile(r"^(train|val)/(ms_ssim|psnr|loss|residual)(_i([1-9]|1[0-6]))?$")
METRICS_HELP = "val/ms_ssim, val/psnr, val/loss, train/ms_ssim, train/psnr, train/loss (or per iteration, e.g. val/psnr_i4)"


def _section(name: str, value: Any, schema: dict, where: str = "") -> dict[str, Any]:
    """``value`` checked against ``schema`` with defaults filled; unknown keys are errors."""
    key = f"{where}{name}"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SweepError(f"{key}: expected a mapping of keys to values, got {type(value).__name__}; "
                         f"write it as `{name}: {{key: value}}`")
    out = {}
    for k, v in value.items():
        if k not in schema:
            raise SweepError(f"{key}: unknown key {shown(k)}; allowed keys are {', '.join(schema)}")
        out[k] = schema[k][1](f"{key}.{k}", v)
    for k, (default, _, _) in schema.items():
        out.setdefault(k, default)
    return out


# --------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class Axis:
    """One varied training parameter: ``grid``/``choice`` list values, ``uniform``/``loguniform`` [lo, hi]."""

    name: str
    kind: str
    values: tuple

    def to_dict(self) -> dict:
        return {self.kind: list(self.values)}

    def sample(self, rng: Any) -> Any:
        """A value drawn with ``rng`` (a ``random.Random``)."""
        if self.kind in ("grid", "choice"):
            return self.values[rng.randrange(len(self.values))]
        lo, hi = self.values
        if self.kind == "uniform":
            return rng.uniform(lo, hi)
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _axis(name: str, value: Any) -> Axis:
    key = f"axes.{name}"
    if name not in TRAIN:
        raise SweepError(f"{key}: {shown(name)} is not a training parameter; axes may vary {', '.join(TRAIN)}")
    if isinstance(value, list):  # shorthand: `batch_size: [32, 64]` is a grid
        value = {"grid": value}
    if not isinstance(value, dict) or len(value) != 1:
        raise SweepError(f"{key}: give exactly one of {', '.join(KINDS)}, e.g. `{name}: {{grid: [a, b]}}`")
    (kind, values), = value.items()
    kind = {"log-uniform": "loguniform", "log_uniform": "loguniform"}.get(kind, kind)
    if kind not in KINDS:
        raise SweepError(f"{key}: unknown axis kind {shown(kind)}; choose one of {', '.join(KINDS)}")
    check = TRAIN[name][1]
    if not isinstance(values, list) or not values:
        raise SweepError(f"{key}.{kind}: expected a non-empty list, e.g. `{kind}: [a, b]`")
    if kind in ("grid", "choice"):
        values = [check(f"{key}.{kind}", v) for v in values]
        if len({json.dumps(v) for v in values}) != len(values):
            raise SweepError(f"{key}.{kind}: repeated values {shown(values)}; list each value once (use repeats for seeds)")
        return Axis(name, kind, tuple(values))
    if name not in REAL_VALUED:
        raise SweepError(f"{key}: {kind} needs a real-valued parameter (lr, weight_decay, width, grad_clip); "
                         f"use grid or choice for {name}")
    if len(values) != 2:
        raise SweepError(f"{key}.{kind}: expected [low, high], got {shown(values)}")
    lo, hi = (check(f"{key}.{kind}", v) for v in values)
    if not lo < hi:
        raise SweepError(f"{key}.{kind}: low {lo:g} must be below high {hi:g}")
    if kind == "loguniform" and lo <= 0:
        raise SweepError(f"{key}.loguniform: low {lo:g} must be positive; use uniform for ranges that include 0")
    return Axis(name, kind, (lo, hi))


# --------------------------------------------------------------------------- the sweep


@dataclass
class Sweep:
    """A validated sweep file."""

    name: str
    data: dict[str, Any]
    fixed: dict[str, Any]
    axes: dict[str, Axis]
    repeats: int = 1
    metric: str = "val/ms_ssim"
    mode: str = "max"
    search: dict[str, Any] = field(default_factory=lambda: {"type": "grid", "samples": 1, "seed": 0})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "fifo"})
    resources: dict[str, Any] = field(default_factory=lambda: {"cpus": 1.0, "gpus": 0.0})
    concurrency: int | None = None
    storage: str = "runs/sweeps"
    wandb: dict[str, Any] = field(default_factory=dict)
    max_failures: int = 2
    keep_checkpoints: int = 2
    description: str = ""

    # -- serialisation (the runner stores it in the sweep folder; trials receive it) --

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "data": dict(self.data),
            "fixed": {k: v for k, v in self.fixed.items() if k not in self.axes}, "axes": {k: a.to_dict() for k, a in self.axes.items()},
            "repeats": self.repeats, "metric": self.metric, "mode": self.mode, "search": dict(self.search),
            "scheduler": dict(self.scheduler), "resources": dict(self.resources),
            "concurrency": self.concurrency, "storage": self.storage, "wandb": dict(self.wandb),
            "max_failures": self.max_failures, "keep_checkpoints": self.keep_checkpoints,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sweep:
        return parse_spec(copy.deepcopy(d), "stored sweep")

    # -- trials --

    def points(self) -> list[dict[str, Any]]:
        """The configurations (axis values) of grid and random search, in a fixed order.

        Grid search enumerates every combination. Random search enumerates the grid axes and, for each
        combination, draws ``search.samples`` values of the other axes with ``search.seed``; every
        point then runs ``repeats`` times with different seeds. Optuna proposes points while running.
        """
        import random

        grid = [a for a in self.axes.values() if a.kind == "grid"]
        rest = [a for a in self.axes.values() if a.kind != "grid"]
        combos = [dict(zip([a.name for a in grid], vals)) for vals in itertools.product(*[a.values for a in grid])]
        if self.search["type"] == "grid":
            return combos
        rng = random.Random(self.search["seed"])
        return [{**c, **{a.name: a.sample(rng) for a in rest}} for c in combos for _ in range(self.search["samples"])]

    def trial_count(self) -> int:
        """How many trials the sweep runs, counted without listing them."""
        if self.search["type"] == "optuna":
            return self.search["samples"]
        combos = math.prod(len(a.values) for a in self.axes.values() if a.kind == "grid")
        samples = self.search["samples"] if self.search["type"] == "random" else 1
        return combos * samples * self.repeats

    def iteration_counts(self) -> tuple[int, ...]:
        """The iteration counts the trials run."""
        return self.axes["iterations"].values if "iterations" in self.axes else (self.fixed["iterations"],)

    def trial_params(self, config: dict[str, Any]) -> dict[str, Any]:
        """The full training parameters of a trial whose Tune config is ``config``."""
        params = dict(self.fixed)
        for k, v in config.items():
            if k == "point":
                params.update(v)
            elif k in TRAIN:
                params[k] = v
        return params


# Parameters added after sweeps had run: left out of a trial's identity at these defaults, so that
# sweeps started before them keep their trial keys and seeds (and resume).
_ADDED = {"val_probes": 0, "gain_growth": 1.0, "cuda_graph": False, "loss_growth": 1.0}


def _identity(params: dict[str, Any], repeat: int) -> bytes:
    """What names a trial: its parameters and repeat index, without later additions at their defaults."""
    named = {k: v for k, v in params.items() if not (k in _ADDED and v == _ADDED[k])}
    return json.dumps([named, int(repeat)], sort_keys=True).encode()


def trial_seed(params: dict[str, Any], repeat: int) -> int:
    """The seed of a trial: a hash of its training parameters and repeat index (not of Ray's ids)."""
    return int.from_bytes(hashlib.sha256(_identity(params, repeat)).digest()[:4], "little") & 0x7FFFFFFF


def trial_key(params: dict[str, Any], repeat: int) -> str:
    """A short stable name of a trial (configuration + repeat), e.g. for W&B run ids."""
    return hashlib.sha256(_identity(params, repeat)).hexdigest()[:12]


def _search(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"type": value}
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SweepError(f"search: expected one of {', '.join(SEARCHES)} or a mapping {{type, samples, seed}}")
    schema = {"type": ("grid", _choice(SEARCHES), ""), "samples": (1, _int(1, 100_000), ""), "seed": (0, _int(0), "")}
    out = _section("search", value, schema)
    if out["type"] == "optuna" and importlib.util.find_spec("optuna") is None:
        raise SweepError("search: optuna needs the optuna package, which is not installed; `pip install optuna`, "
                         "or use search: random")
    return out


def _scheduler(value: Any, epochs: int) -> dict[str, Any]:
    if isinstance(value, str) or value is None:
        value = {"type": value or "fifo"}
    if not isinstance(value, dict):
        raise SweepError(f"scheduler: expected one of {', '.join(SCHEDULERS)} or a mapping {{type: asha, ...}}")
    kind = _choice(SCHEDULERS)("scheduler.type", value.get("type", "fifo"))
    if kind == "fifo":
        return _section("scheduler", value, {"type": ("fifo", _choice(SCHEDULERS), "")})
    schema = {"type": ("asha", _choice(SCHEDULERS), ""), "grace_period": (1, _int(1), ""),
              "reduction_factor": (2, _int(2), ""), "brackets": (1, _int(1, 10), "")}
    out = _section("scheduler", value, schema)
    if out["grace_period"] > epochs:
        raise SweepError(f"scheduler.grace_period: {out['grace_period']} exceeds the {epochs} epochs; lower it")
    return out


def _resources(value: Any) -> dict[str, Any]:
    schema = {"cpus": (1.0, _float(0, 1024, open_lo=True), ""), "gpus": (0.0, _float(0, 64), "")}
    out = _section("resources", value, schema)
    g = out["gpus"]
    if g > 1 and g != int(g):
        raise SweepError(f"resources.gpus: {g:g} is impossible; a trial takes a fraction of one GPU (≤ 1) "
                         "or a whole number of GPUs")
    return out


def parse_spec(raw: Any, origin: str = "sweep file") -> Sweep:
    """Validate a loaded sweep mapping; raise SweepError naming the first problem."""
    if not isinstance(raw, dict):
        raise SweepError(f"{origin} must be a YAML mapping of keys ({', '.join(TOP)}), got {type(raw).__name__}")
    for k in raw:
        if k not in TOP:
            raise SweepError(f"unknown top-level key {shown(k)}; allowed keys are {', '.join(TOP)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SweepError(f"name: {shown(name)} is not a sweep name; use letters, digits, '.', '_' or '-' (at most 100)")
    data = _section("data", raw.get("data"), DATA)
    if (data["source"] is None) == (data["location"] is None):
        raise SweepError(f"data: give either source ({SOURCES}) to prepare, "
                         "or location of a prepared folder, not both or neither")
    if data["source"] is not None:
        try:
            check_source(data["source"])
        except DataError as exc:
            raise SweepError(f"data.source: {exc}") from None
        if data["root"] is not None and data["source"] not in CIFAR:
            raise SweepError(f"data.root (or --data-root) applies to CIFAR sources only, not to {data['source']}; "
                             "remove it")
    fixed = _section("fixed", raw.get("fixed"), TRAIN)
    raw_axes = raw.get("axes") or {}
    if not isinstance(raw_axes, dict):
        raise SweepError("axes: expected a mapping of training parameters to {grid|choice|uniform|loguniform: ...}")
    axes = {k: _axis(k, v) for k, v in raw_axes.items()}
    for k in axes:
        if k in (raw.get("fixed") or {}):
            raise SweepError(f"{k} is both in fixed and in axes; remove it from one of them")
    if "epochs" in axes:
        raise SweepError("axes.epochs: epochs cannot vary; every trial reports per epoch, so compare curves instead")
    repeats = _int(1, 1000)("repeats", raw.get("repeats", 1))
    metric = raw.get("metric", "val/ms_ssim")
    if not isinstance(metric, str) or not METRIC_RE.match(metric):
        raise SweepError(f"metric: {shown(metric)} is not a reported metric; choose one of {METRICS_HELP}")
    fewest = min(axes["iterations"].values) if "iterations" in axes else fixed["iterations"]
    needed = METRIC_RE.match(metric).group(4)
    if needed and int(needed) > fewest:
        raise SweepError(f"metric: {metric} needs iteration {needed} but trials with iterations={fewest} report only "
                         f"_i1.._i{fewest}; rank by an iteration every trial runs, or drop the smaller counts")
    modes = axes["reconstruction"].values if "reconstruction" in axes else [fixed["reconstruction"]]
    if "one-shot" in modes and ("gain_growth" in axes or fixed["gain_growth"] != 1):
        raise SweepError("gain_growth: one-shot reconstruction has no residuals to scale; "
                         "leave gain_growth at 1 or drop one-shot from reconstruction")
    optimizers = axes["optimizer"].values if "optimizer" in axes else [fixed["optimizer"]]
    if "sgd" in optimizers and ("cuda_graph" in axes or fixed["cuda_graph"]):
        raise SweepError("cuda_graph: a graphed step needs the adam or adamw optimizer; "
                         "drop cuda_graph or drop sgd from optimizer")
    mode = _choice(("max", "min"))("mode", raw.get("mode", "min" if "loss" in metric or "residual" in metric else "max"))
    search = _search(raw.get("search"))
    if search["type"] == "grid":
        for a in axes.values():
            if a.kind != "grid":
                raise SweepError(f"axes.{a.name}: {a.kind} cannot be enumerated by search: grid; "
                                 "use search: random (or optuna), or make it a grid")
    if search["type"] == "optuna" and repeats != 1:
        raise SweepError("repeats: optuna proposes each configuration once; set repeats: 1 or use search: random")
    epochs = fixed["epochs"]
    scheduler = _scheduler(raw.get("scheduler"), epochs)
    resources = _resources(raw.get("resources"))
    concurrency = _int(1, 100_000, none=True)("concurrency", raw.get("concurrency"))
    storage = _str()("storage", raw.get("storage", "runs/sweeps"))
    try:
        check_no_secret(storage)
    except RnncodecError as exc:
        raise SweepError(f"storage: {exc}") from None
    wandb = _section("wandb", raw.get("wandb"), WANDB)
    max_failures = _int(0, 1000)("max_failures", raw.get("max_failures", 2))
    keep = _int(1, 1000)("keep_checkpoints", raw.get("keep_checkpoints", 2))
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise SweepError("description: expected text")
    sweep = Sweep(name=name, data=data, fixed=fixed, axes=axes, repeats=repeats, metric=metric, mode=mode,
                  search=search, scheduler=scheduler, resources=resources, concurrency=concurrency,
                  storage=storage, wandb=wandb, max_failures=max_failures, keep_checkpoints=keep,
                  description=description)
    if sweep.trial_count() > MAX_TRIALS:
        raise SweepError(f"the sweep expands to {sweep.trial_count():,} trials, more than the {MAX_TRIALS:,} "
                         "one sweep may run; shorten the axes or split the sweep")
    return sweep


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (which it would merge
    silently, keeping the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class names it
            if duplicate:
                raise SweepError(f"line {key_node.start_mark.line + 1}: the key {shown(key)} is given twice in one "
                                 "mapping; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(value: Any, sizes: dict[int, int], active: set[int]) -> int:
    """How many values ``value`` holds once shared references (YAML aliases) are expanded, computed in
    time proportional to the distinct values; SweepError for a self-referencing value."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in active:
        raise SweepError("a YAML alias refers to a value that contains it; write the value out")
    if id(value) not in sizes:
        active.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        sizes[id(value)] = 1 + sum(_expanded_size(v, sizes, active) for _, v in items)
        active.discard(id(value))
    return sizes[id(value)]


def load_spec(path: str | Path) -> Sweep:
    """Read and validate a sweep file."""
    path = Path(path)
    try:
        data = read_limited(path, "sweep", MAX_FILE_BYTES, "give a YAML sweep file")
    except FileError as exc:
        raise SweepError(f"{exc} (a YAML sweep file: see sweeps/demo.yaml)") from None
    try:
        raw = yaml.load(data.decode(), Loader=_Loader)  # noqa: S506 - a SafeLoader
        if raw is None:
            raise SweepError("the file is empty; start from sweeps/demo.yaml")
        if _expanded_size(raw, {}, set()) > MAX_VALUES:
            raise SweepError(f"the file expands to more than {MAX_VALUES:,} values through YAML aliases; "
                             "write the values out")
        return parse_spec(raw, "the file")
    except SweepError as exc:
        raise SweepError(f"{path}: {exc}") from None
    except yaml.reader.ReaderError as exc:
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        raise SweepError(f"{path} holds a character YAML does not allow (#x{code:04x} at character "
                         f"{exc.position}); remove it") from None
    except ValueError:  # PyYAML's int() of a number longer than Python reads
        raise SweepError(f"{path} holds a number too long to read (over {sys.get_int_max_str_digits()} digits); "
                         "no setting needs one: shorten it") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SweepError(f"{path} is not valid YAML ({problem}{where}); fix the syntax there") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path} is not a text file; give a YAML sweep file") from None
    except RecursionError:
        raise SweepError(f"{path} nests its values too deeply; flatten it") from None


def check_train_size(train_size: int | None, prepared: int) -> None:
    """Refuse a ``train_size`` above the ``prepared`` training images."""
    if train_size is not None and train_size > prepared:
        raise SweepError(f"train_size {train_size} exceeds the {prepared} prepared training images; lower it, "
                         "or prepare more (data.size, data.rotations)")


def check_resources(sweep: Sweep, cpus: float, gpus: float) -> None:
    """Refuse a trial that cannot fit the machine (``cpus``/``gpus`` available) before anything starts."""
    need = sweep.resources["cpus"]
    if need > cpus:
        raise SweepError(f"resources.cpus: a trial asks for {need:g} CPUs but only {cpus:g} are available; "
                         f"lower resources.cpus to at most {cpus:g}")
    if gpus and sweep.resources["gpus"] > gpus:
        raise SweepError(f"resources.gpus: a trial asks for {sweep.resources['gpus']:g} GPUs but only {gpus:g} "
                         f"are available; lower resources.gpus")
