"""Sweep files: the shipped ones load, bad ones fail with one-line messages before Ray starts."""

from pathlib import Path

import pytest
import yaml

from rnncodec.sweeps.spec import Sweep, SweepError, check_resources, load_spec, parse_spec, trial_key, trial_seed

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def minimal(**extra):
    return {"name": "t", "data": {"source": "sample"}, **extra}


def error(raw) -> str:
    with pytest.raises(SweepError) as info:
        parse_spec(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_sweep_files_load():
    demo = load_spec(SWEEPS / "demo.yaml")
    assert demo.search["type"] == "grid" and demo.data["source"] == "sample" and demo.wandb["mode"] == "auto"
    assert demo.trial_count() == len(demo.points()) * demo.repeats

    paper = load_spec(SWEEPS / "paper.yaml")
    assert paper.axes["batch_size"].values == (32, 64, 128, 512, 1024)
    assert paper.axes["train_size"].values == (50_000, 100_000, 200_000)
    assert paper.repeats >= 3 and paper.fixed["epochs"] == 15 and paper.fixed["iterations"] == 1
    assert paper.fixed["loss"] == "ms-ssim" and paper.fixed["optimizer"] == "adam"
    assert paper.fixed["activation"] == "leaky-relu"
    assert paper.data["source"] == "cifar" and paper.data["rotations"] == 4
    assert paper.trial_count() == 15 * paper.repeats

    study = load_spec(SWEEPS / "study.yaml")  # the scaled study: the same design, nested 1:2:4 sets
    assert study.axes["batch_size"].values == paper.axes["batch_size"].values
    sizes = study.axes["train_size"].values
    assert sizes[1] == 2 * sizes[0] and sizes[2] == 4 * sizes[0] and study.data["size"] == sizes[2]
    assert {k: study.fixed[k] for k in ("iterations", "loss", "optimizer", "activation")} == \
        {k: paper.fixed[k] for k in ("iterations", "loss", "optimizer", "activation")}
    assert study.repeats >= 3 and study.fixed["val_probes"] > 0 and study.resources["cpus"] == 1

    iters = load_spec(SWEEPS / "iterations.yaml")
    assert iters.axes["iterations"].values == (1, 2, 4, 8, 16)
    assert set(iters.axes["cell"].values) == {"lstm", "gru"}
    assert "reconstruction" in iters.axes


def test_round_trip_and_trial_params():
    spec = parse_spec(minimal(fixed={"width": 0.125}, axes={"batch_size": [8, 16], "cell": {"grid": ["lstm", "gru"]}},
                              repeats=2))
    again = Sweep.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert spec.points() == [{"batch_size": b, "cell": c} for b in (8, 16) for c in ("lstm", "gru")]
    params = spec.trial_params({"batch_size": 16, "cell": "gru", "repeat": 1})
    assert params["batch_size"] == 16 and params["cell"] == "gru" and params["width"] == 0.125


def test_random_search_draws_fixed_points_that_every_repeat_shares():
    spec = parse_spec(minimal(axes={"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": [8, 16]},
                              search={"type": "random", "samples": 3, "seed": 5}, repeats=2))
    points = spec.points()
    assert len(points) == 6 and points == spec.points()
    assert all(1e-4 <= p["lr"] <= 1e-2 for p in points)
    assert spec.trial_count() == 12


def test_seed_derives_from_configuration_and_repeat():
    p = {"batch_size": 8, "lr": 1e-3}
    assert trial_seed(p, 0) == trial_seed(dict(reversed(p.items())), 0)
    assert trial_seed(p, 0) != trial_seed(p, 1) != trial_seed({**p, "batch_size": 16}, 1)
    assert trial_key(p, 0) == trial_key(p, 0) and len(trial_key(p, 0)) == 12
    # val_probes, gain_growth, cuda_graph and loss_growth (added later) at their defaults leave the keys and seeds
    # of older sweeps
    for added, default, other in (("val_probes", 0, 2), ("gain_growth", 1.0, 1.1), ("cuda_graph", False, True),
                                  ("loss_growth", 1.0, 1.3)):
        assert trial_key({**p, added: default}, 0) == trial_key(p, 0) != trial_key({**p, added: other}, 0)
        assert trial_seed({**p, added: default}, 0) == trial_seed(p, 0)


@pytest.mark.parametrize(
    "raw, words",
    [
        (minimal(colour="red"), ["unknown top-level key 'colour'", "allowed keys are", "fixed"]),
        (minimal(data={"source": "sample", "root": "/x"}), ["data.root (or --data-root) applies to CIFAR sources only"]),
        (minimal(name="abc\n"), ["is not a sweep name"]),
        (minimal(storage="s3://AKIA:hunter2@bucket/x"), ["storage: a storage URI holds a secret key"]),
        (minimal(fixed={"batchsize": 8}), ["fixed: unknown key 'batchsize'", "batch_size"]),
        (minimal(fixed={"cell": "lstn"}), ["fixed.cell", "'lstn'", "lstm, gru"]),
        (minimal(fixed={"loss": "ssim"}), ["fixed.loss", "l1, mse, psnr, ms-ssim"]),
        (minimal(fixed={"gain_growth": 0.9}), ["fixed.gain_growth", "out of range"]),
        (minimal(fixed={"loss_growth": 3}), ["fixed.loss_growth", "out of range"]),
        (minimal(fixed={"gain_growth": 1.1}, axes={"reconstruction": ["additive", "one-shot"]}),
         ["gain_growth", "one-shot", "leave gain_growth at 1"]),
        (minimal(fixed={"cuda_graph": True}, axes={"optimizer": ["adam", "sgd"]}),
         ["cuda_graph", "adam or adamw", "drop sgd"]),
        (minimal(fixed={"iterations": 17}), ["fixed.iterations", "1..16"]),
        (minimal(fixed={"lr": "fast"}), ["fixed.lr", "not a number"]),
        (minimal(axes={"lr": {"loguniform": [1e-3, 1e-4]}}, search="random"), ["axes.lr.loguniform", "below"]),
        (minimal(axes={"lr": {"loguniform": [1e-4, 1e-3]}}), ["axes.lr", "search: grid", "search: random"]),
        (minimal(axes={"train_size": {"uniform": [10, 20]}}, search="random"), ["axes.train_size", "use grid or choice"]),
        (minimal(axes={"cell": {"normal": [0, 1]}}), ["axes.cell", "unknown axis kind", "grid, choice"]),
        (minimal(axes={"colour": [1, 2]}), ["axes.colour", "not a training parameter"]),
        (minimal(axes={"batch_size": [8, 8]}), ["axes.batch_size.grid", "repeated"]),
        (minimal(fixed={"batch_size": 8}, axes={"batch_size": [8, 16]}), ["batch_size is both"]),
        (minimal(metric="val/accuracy"), ["metric", "val/ms_ssim"]),
        (minimal(mode="maximum"), ["mode", "max, min"]),
        (minimal(scheduler="hyperband"), ["scheduler.type", "fifo, asha"]),
        (minimal(search="bayes"), ["search.type", "grid, random, optuna"]),
        (minimal(resources={"cpus": 0}), ["resources.cpus", "out of range"]),
        (minimal(resources={"gpus": 1.5}), ["resources.gpus", "impossible"]),
        (minimal(wandb={"mode": "cloud"}), ["wandb.mode", "auto, online, offline, disabled"]),
        (minimal(repeats=0), ["repeats", "out of range"]),
        ({"name": "t", "data": {"source": "imagenet"}}, ["data.source", "cifar"]),
        ({"name": "t"}, ["data: give either source"]),
        ({"name": "bad name!", "data": {"source": "sample"}}, ["name", "letters, digits"]),
        ([1, 2], ["must be a YAML mapping"]),
    ],
)
def test_bad_sweeps_name_the_key_and_the_fix(raw, words):
    message = error(raw)
    for w in words:
        assert w in message, message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ndata: {source: sample\nfixed:\n  epochs: 2\n")
    with pytest.raises(SweepError, match=r"bad\.yaml is not valid YAML .*line \d+"):
        load_spec(path)
    with pytest.raises(SweepError, match="no such sweep file"):
        load_spec(tmp_path / "missing.yaml")
    path.write_text(yaml.safe_dump(minimal(fixed={"epoch": 3})))
    with pytest.raises(SweepError, match=r"bad\.yaml: fixed: unknown key 'epoch'"):
        load_spec(path)


def test_impossible_resources_are_refused():
    spec = parse_spec(minimal(resources={"cpus": 4, "gpus": 0.5}))
    with pytest.raises(SweepError, match="asks for 4 CPUs but only 2 are available"):
        check_resources(spec, 2, 0)
    check_resources(spec, 8, 0)  # no GPU: the trial runs on CPU, the same file works
    with pytest.raises(SweepError, match="resources.gpus"):
        check_resources(parse_spec(minimal(resources={"gpus": 2})), 8, 1)


@pytest.mark.parametrize(
    "content, match",
    [
        ("name: t\ndata: [unclosed\n", "is not valid YAML"),
        ("name: t\ndata: {source: sample}\nfixed: {epochs: 2, colour: red}\n", "unknown key 'colour'"),
        ("name: t\ndata: {source: sample}\nresources: {cpus: 512}\n", "asks for 512 CPUs"),
    ],
)
def test_run_refuses_bad_sweeps_before_ray_starts(tmp_path, content, match):
    ray = pytest.importorskip("ray")
    from rnncodec.sweeps import runner

    path = tmp_path / "s.yaml"
    path.write_text(content)
    assert not ray.is_initialized()
    with pytest.raises(SweepError, match=match):
        runner.run(path, storage=str(tmp_path / "out"))
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists()


def test_sweep_commands_parse_and_report_a_missing_folder(tmp_path):

    from rnncodec.sweeps import cli

    parser = cli.build_parser()
    args = parser.parse_args(["sweep", "run", "s.yaml", "--name", "n", "--storage", "s3://b/x", "--address", "auto"])
    assert (args.spec, args.name, args.storage, args.address) == ("s.yaml", "n", "s3://b/x", "auto")
    for command in ("resume", "status", "report"):
        args = parser.parse_args(["sweep", command, str(tmp_path)])
        with pytest.raises(SweepError, match="is not a sweep folder"):
            args.func(args)


BILLION_LAUGHS = """name: bomb
data: {source: sample}
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
fixed: {epochs: *h}
"""


@pytest.mark.parametrize("content, match", [
    (BILLION_LAUGHS, "expands to more than 100,000 values through YAML aliases"),
    ("name: t\ndata: {source: sample}\nfixed: &x {epochs: 2, lr: *x}\n", "refers to a value that contains it"),
    ("name: t\ndata: {source: sample}\nfixed: {epochs: 2}\nfixed: {epochs: 3}\n", "line 4: the key 'fixed' is given twice"),
    ("name: t\ndata: {source: sample}\nfixed: {epochs: 2, epochs: 3}\n", "the key 'epochs' is given twice"),
    ("name: t\ndata: {source: sample}\nfixed: " + "[" * 5000 + "]" * 5000 + "\n", "YAML|deeply"),
])
def test_hostile_yaml_is_refused_quickly_in_one_line(tmp_path, content, match):
    path = tmp_path / "s.yaml"
    path.write_text(content)
    with pytest.raises(SweepError, match=match) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("content, match", [
    ("name: t\x00\n", r"holds a character YAML does not allow \(#x0000 at character 7\); remove it"),
    ("name: t\nfixed: {batch_size: " + "9" * 5000 + "}\n", r"holds a number too long to read \(over \d+ digits\)"),
    ("", r"s\.yaml: the file is empty; start from sweeps/demo\.yaml"),
    ("1.5: x\n", r"s\.yaml: unknown top-level key 1\.5; allowed keys are name"),
])
def test_unreadable_values_and_characters_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "s.yaml"
    path.write_text(content)
    with pytest.raises(SweepError, match=match) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and str(info.value).count("s.yaml") == 1


def test_yaml_merge_keys_may_override_what_they_merge(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ndata: {source: sample}\nbase: &base {epochs: 2, lr: 0.001}\n")
    with pytest.raises(SweepError, match="unknown top-level key 'base'"):
        load_spec(path)  # the anchor must live somewhere the schema allows: here it does not
    path.write_text("name: t\ndata: {source: sample}\nfixed: {<<: {epochs: 2, lr: 0.001}, lr: 0.002}\n")
    assert load_spec(path).fixed["lr"] == 0.002


def test_a_huge_grid_is_counted_not_listed():
    axes = {"lr": [1e-4 * (i + 1) for i in range(2000)], "width": [0.1 * (i + 1) for i in range(40)],
            "batch_size": list(range(1, 101))}
    message = error(minimal(axes=axes, repeats=1000))
    assert "8,000,000,000 trials" in message and "split the sweep" in message
    assert parse_spec(minimal(axes={"batch_size": [8, 16]}, repeats=3)).trial_count() == 6


def test_per_iteration_metrics_are_checked_against_every_trial():
    message = error(minimal(axes={"iterations": [2, 4]}, metric="val/psnr_i3"))
    assert "iterations=2 report only _i1.._i2" in message
    assert parse_spec(minimal(axes={"iterations": [2, 4]}, metric="val/psnr_i2")).metric == "val/psnr_i2"
    assert parse_spec(minimal(metric="val/ms_ssim_i1")).metric == "val/ms_ssim_i1"


def test_test_hooks_are_not_part_of_the_sweep_schema():
    assert "unknown key 'test_fail_after_epoch'" in error(minimal(fixed={"test_fail_after_epoch": 1}))
    assert parse_spec(minimal(fixed={"deterministic": True})).fixed["deterministic"] is True


def _mutations(text: str, rng) -> bytes:
    """One random damage to a sweep file: flipped bytes, a cut, a duplicated or deleted line, a value
    replaced by a hostile one, or nested junk."""
    lines = text.splitlines()
    kind = rng.integers(6)
    if kind == 0:
        data = bytearray(text.encode())
        for pos in rng.integers(0, len(data), rng.integers(1, 5)):
            data[pos] = rng.integers(0, 256)
        return bytes(data)
    if kind == 1:
        return text.encode()[: rng.integers(0, len(text))]
    i = rng.integers(len(lines))
    if kind == 2:
        lines.insert(i, lines[i])
    elif kind == 3:
        del lines[i]
    elif kind == 4 and ":" in lines[i]:
        junk = ["-1", "1e309", "[]", "{}", "null", "true", "'x' * 3", "[[[[[]]]]]", "999999999999999999999",
                "!!python/object:os.system {}", "&a [*a]", "0x10", "{a: {b: {c: {d: 1}}}}", "'folder:..'"]
        lines[i] = lines[i].split(":", 1)[0] + ": " + junk[rng.integers(len(junk))]
    else:
        lines.insert(i, "  " * rng.integers(0, 3) + f"k{rng.integers(9)}: [{', '.join(['{x: 1}'] * 3)}]")
    return ("\n".join(lines) + "\n").encode()


def test_fuzzed_sweep_files_load_or_are_refused_in_one_line(tmp_path):
    import numpy as np

    rng = np.random.default_rng(2026)
    texts = [(SWEEPS / f).read_text() for f in ("demo.yaml", "paper.yaml", "iterations.yaml")]
    path = tmp_path / "s.yaml"
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(600):
        path.write_bytes(_mutations(texts[case % 3], rng))
        try:
            load_spec(path)
            outcomes["loaded"] += 1
        except SweepError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)
            outcomes["refused"] += 1
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 200, outcomes
