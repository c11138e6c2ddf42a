"""What a sweep's numbers say, with repeats taken seriously.

- means with 95% confidence intervals across repeats (Student t);
- Welch's t-test between configurations, with Holm's step-down correction for the number of
  comparisons made in one question (Holm 1979, Scand. J. Statist. 6:65-70);
- each trial's metric at equal optimizer steps or equal samples seen: its curve (validations at epoch
  ends and at ``val_probes`` steps) interpolated linearly in log steps or log samples;
- the shape of the metric along one axis at each setting of the others: an interior optimum, an
  interior dip, or neither beyond the seed-to-seed spread.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

from scipy import stats

from rnncodec.sweeps.spec import Sweep
from rnncodec.sweeps.storage import validations

ALPHA = 0.05
# The quantity that is equal across the levels of an axis when they are compared "at equal X": batch
# sizes at equal optimizer steps, training-set sizes at equal samples seen.
ALIGN = {"batch_size": "steps", "train_size": "samples_seen"}


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and 95% confidence half-width (nan when n < 2)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = sum(values) / n
    if n < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, sd, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def welch(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test for equal means (nan with fewer than 2 values a side)."""
    if min(len(a), len(b)) < 2:
        return math.nan
    if max(a) == min(a) and max(b) == min(b):
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():  # scipy warns of lost precision when the values are nearly equal
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (nan stays nan and does not count as a comparison)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def curve(trial: dict[str, Any], metric: str) -> list[tuple[int, int, float]]:
    """(steps, samples seen, value) of every validation of a trial: probes and epoch ends, by steps."""
    points = {}
    for p in validations(trial["history"]):
        if isinstance(p, dict) and isinstance(p.get(metric), (int, float)) and isinstance(p.get("steps"), int):
            points[p["steps"]] = (p["steps"], int(p.get("samples_seen", 0)), float(p[metric]))
    return [points[s] for s in sorted(points)]


def at(points: list[tuple[int, int, float]], key: str, x: float) -> float | None:
    """The curve's value at ``x`` steps (key ``steps``) or samples (``samples_seen``), interpolated
    linearly in log x between the two validations around it; None outside the curve."""
    i = 0 if key == "steps" else 1
    for (x0, v0), (x1, v1) in zip(((p[i], p[2]) for p in points), ((p[i], p[2]) for p in points[1:])):
        if x0 <= x <= x1:
            return v0 if x1 == x0 else v0 + (v1 - v0) * (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return points[0][2] if points and points[0][i] == x else None


def _complete(spec: Sweep, trial: dict[str, Any]) -> bool:
    """Whether the trial trained all its epochs without diverging (a diverged trial stops, or ends NaN)."""
    history = trial["history"]
    return any(h.get("epoch") == spec.fixed["epochs"] for h in history) and not any(h.get("diverged") is True for h in history)


def final_values(spec: Sweep, trials: list[dict[str, Any]]) -> dict[str, float]:
    """Trial → its metric at the last epoch (trials that completed it)."""
    out = {}
    for t in filter(lambda t: _complete(spec, t), trials):
        v = [h.get(spec.metric) for h in t["history"] if h.get("epoch") == spec.fixed["epochs"]]
        if v and isinstance(v[-1], (int, float)):
            out[t["trial"]] = float(v[-1])
    return out


def setting_of(spec: Sweep, params: dict[str, Any], axis: str) -> tuple:
    return tuple((a, params.get(a)) for a in spec.axes if a != axis)


def order(value: Any) -> tuple:
    """Sort key for axis values and settings: numbers numerically, before text."""
    if isinstance(value, tuple):
        return tuple(order(v) for _, v in value)
    return (isinstance(value, str), value if not isinstance(value, str) else 0, str(value))


def aligned_values(spec: Sweep, trials: list[dict[str, Any]], axis: str, key: str) -> tuple[dict[str, float], dict[tuple, float]]:
    """Trial → metric at the largest ``key`` (steps or samples_seen) that every completed trial sharing
    the other axes' values reached; also that common x per setting."""
    groups: dict[tuple, list[tuple[str, list]]] = {}
    for t in trials:
        if _complete(spec, t):
            groups.setdefault(setting_of(spec, t["params"], axis), []).append((t["trial"], curve(t, spec.metric)))
    values, common = {}, {}
    i = 0 if key == "steps" else 1
    for setting, members in groups.items():
        members = [(name, pts) for name, pts in members if pts]
        if not members:
            continue
        x = min(pts[-1][i] for _, pts in members)
        common[setting] = x
        for name, pts in members:
            v = at(pts, key, x)
            if v is not None:
                values[name] = v
    return values, common


def along(spec: Sweep, trials: list[dict[str, Any]], values: dict[str, float], axis: str) -> list[dict[str, Any]]:
    """At each setting of the other axes: per level of ``axis`` the mean, sd, 95% half-width and n of
    ``values``; every pair of levels with its Welch and Holm p (Holm over all pairs of all settings:
    one question); and a verdict on the shape."""
    cells: dict[tuple, dict[Any, list[float]]] = {}
    for t in trials:
        if t["trial"] in values:
            level = t["params"].get(axis)
            cells.setdefault(setting_of(spec, t["params"], axis), {}).setdefault(level, []).append(values[t["trial"]])
    out = []
    for setting in sorted(cells, key=order):
        by_level = cells[setting]
        levels = sorted(by_level, key=order)
        pairs = [{"a": a, "b": b, "delta": mean_ci(by_level[a])[0] - mean_ci(by_level[b])[0],
                  "p": welch(by_level[a], by_level[b])} for a, b in combinations(levels, 2)]
        out.append({"setting": setting, "levels": [(lv, *mean_ci(by_level[lv]), len(by_level[lv])) for lv in levels],
                    "pairs": pairs})
    adjusted = iter(holm([p["p"] for s in out for p in s["pairs"]]))
    for s in out:
        for p in s["pairs"]:
            p["p_holm"] = next(adjusted)
        s["verdict"] = _verdict(s, spec.mode == "max")
    return out


def _significant(s: dict[str, Any], a: Any, b: Any) -> bool:
    """Whether levels a and b differ after Holm's correction."""
    for p in s["pairs"]:
        if {p["a"], p["b"]} == {a, b}:
            return p["p_holm"] < ALPHA
    return False


def _verdict(s: dict[str, Any], higher_is_better: bool) -> str:
    levels = [lv[0] for lv in s["levels"]]
    means = {lv[0]: lv[1] for lv in s["levels"]}
    if len(levels) < 3:
        return "fewer than 3 levels: no shape to judge"
    sign = 1 if higher_is_better else -1
    best = max(levels, key=lambda lv: sign * means[lv])
    first, last = levels[0], levels[-1]
    if best not in (first, last):
        if _significant(s, best, first) and _significant(s, best, last):
            return f"interior optimum at {best}, better than both ends beyond the seed spread"
        return f"best mean at {best}, but not better than both ends beyond the seed spread"
    dips = [m for i, m in enumerate(levels[1:-1], 1)
            if all(sign * (means[m] - means[n]) < 0 and _significant(s, m, n) for n in (levels[i - 1], levels[i + 1]))]
    if dips:
        return f"interior dip at {', '.join(map(str, dips))}: worse than both neighbours beyond the seed spread"
    beaten = [lv for lv in levels if lv != best and _significant(s, best, lv)]
    return (f"best at the end {best}; no interior optimum"
            + (f"; better than {', '.join(map(str, beaten))} beyond the seed spread" if beaten
               else "; no difference beyond the seed spread"))


__all__ = ["ALIGN", "ALPHA", "aligned_values", "along", "at", "curve", "final_values", "holm", "mean_ci", "order",
           "setting_of", "welch"]
