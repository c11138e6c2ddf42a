"""The statistics of sweep reports: confidence intervals, Welch and Holm, values at equal steps or
samples, verdicts on the shape of a metric along an axis; and the report built from a sweep folder."""

import math

import pytest
from scipy import stats

from rnncodec.sweeps.analysis import aligned_values, along, at, curve, final_values, holm, mean_ci, welch
from rnncodec.sweeps.results import best_checkpoint, summary_markdown
from rnncodec.sweeps.spec import parse_spec


def test_mean_ci_uses_the_t_quantile():
    m, sd, h = mean_ci([1.0, 2.0, 3.0])
    assert (m, sd) == (2.0, 1.0) and h == pytest.approx(4.302653 / math.sqrt(3))
    assert math.isnan(mean_ci([1.0])[2]) and math.isnan(mean_ci([])[0])


def test_welch_matches_the_textbook_and_handles_degenerate_samples():
    a, b = [0.61, 0.63, 0.62, 0.64], [0.58, 0.57, 0.60]
    se = math.sqrt(stats.tvar(a) / 4 + stats.tvar(b) / 3)
    t = (sum(a) / 4 - sum(b) / 3) / se
    df = se**4 / ((stats.tvar(a) / 4) ** 2 / 3 + (stats.tvar(b) / 3) ** 2 / 2)
    assert welch(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch([1.0, 1.0], [1.0, 1.0]) == 1.0 and welch([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert math.isnan(welch([1.0], [1.0, 2.0]))


def test_holm_steps_down_and_skips_untested_pairs():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def trial(name, batch, size, values_by_steps, samples_per_step=None):
    """A trial record whose history has one epoch end per (steps, value) and no probes."""
    per = samples_per_step or batch
    history = [{"epoch": i + 1, "steps": s, "samples_seen": s * per, "val/ms_ssim": v}
               for i, (s, v) in enumerate(values_by_steps)]
    return {"trial": name, "params": {"batch_size": batch, "train_size": size}, "history": history}


SPEC = parse_spec({"name": "s", "data": {"source": "sample"}, "fixed": {"epochs": 2},
                   "axes": {"batch_size": [8, 16, 32], "train_size": [64]}, "metric": "val/ms_ssim", "mode": "max"})


def test_values_at_equal_steps_interpolate_in_log_steps():
    points = curve(trial("t", 8, 64, [(10, 0.2), (40, 0.6)]), "val/ms_ssim")
    assert at(points, "steps", 20) == pytest.approx(0.4) and at(points, "steps", 10) == 0.2
    assert at(points, "steps", 5) is None and at(points, "steps", 41) is None
    assert at(points, "samples_seen", 160) == pytest.approx(0.4)
    trials = [trial("a", 8, 64, [(8, 0.3), (16, 0.5)]), trial("b", 16, 64, [(4, 0.25), (8, 0.35)])]
    values, common = aligned_values(SPEC, trials, "batch_size", "steps")
    assert common == {(("train_size", 64),): 8} and values == {"a": 0.3, "b": 0.35}


def test_a_diverged_trial_counts_in_no_final_value_even_at_the_last_epoch():
    done, late, early = (trial(n, 8, 64, [(8, 0.3), (16, 0.5)]) for n in ("done", "late", "early"))
    late["history"][-1]["diverged"] = True  # garbage but finite metrics: a NaN model can still score 6 dB
    early["history"] = early["history"][:1]
    early["history"][0]["diverged"] = True
    assert final_values(SPEC, [done, late, early]) == {"done": 0.5}
    values, _ = aligned_values(SPEC, [done, late], "batch_size", "steps")
    assert set(values) == {"done"}
    for t, epoch in ((done, None), (late, 2), (early, 1)):
        t.update(status="TERMINATED", failures=0, error=None, started=None, diverged=epoch)
    late["checkpoints"] = {1: "epoch-1", 2: "epoch-2"}
    early["checkpoints"] = {1: "epoch-1"}
    assert best_checkpoint(SPEC, late) == (0.3, "epoch-1") and best_checkpoint(SPEC, early) is None  # NaN weights
    summary = summary_markdown(SPEC, [done, late, early], [])
    assert "3 trials (1 completed all 2 epochs)" in summary
    assert "Diverged and stopped (a non-finite training loss; left out of the means): late in epoch 2, early in epoch 1." in summary
    assert "- trials: 3 finished (2 of them stopped when they diverged), 0 errored" in summary


def test_verdicts_name_an_interior_optimum_a_dip_or_neither():
    def trials(means):
        return [trial(f"{b}-{k}", b, 64, [(1, 0.0), (2, m + d)])
                for b, m in zip((8, 16, 32), means) for k, d in enumerate((-0.01, 0.0, 0.01))]

    def finals(ts):
        return {t["trial"]: t["history"][-1]["val/ms_ssim"] for t in ts}

    for means, words in (((0.5, 0.7, 0.5), "interior optimum at 16"),
                         ((0.7, 0.6, 0.5), "best at the end 8; no interior optimum; better than 16, 32"),
                         ((0.5, 0.3, 0.6), "interior dip at 16"), ((0.5, 0.5, 0.501), "no difference beyond")):
        ts = trials(means)
        [s] = along(SPEC, ts, finals(ts), "batch_size")
        assert words in s["verdict"], (means, s["verdict"])
        assert len(s["pairs"]) == 3 and all(p["p_holm"] >= p["p"] for p in s["pairs"])
