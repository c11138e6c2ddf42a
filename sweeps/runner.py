"""Start or join Ray, prepare the data once, build the Tuner, run a sweep or resume it.

A sweep lives in one folder, ``STORAGE/NAME`` (a local folder or a pyarrow URI such as
``s3://bucket/sweeps/NAME``): Tune's experiment state and trial folders, each trial's checkpoints,
``sweep.json`` (the validated sweep file, the prepared data's location, the W&B settings and the
sweep's id), for local storage the offline W&B runs under ``wandb/`` and, for remote storage, the
prepared data under ``data/``, from where every node copies it to its own cache: the nodes of a
cluster need share no disk. ``resume`` needs only that folder. Everything that can be checked is
checked before Ray starts or data is prepared: the sweep file, the storage (written to once), the
resources and the W&B version.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from rnncodec.data.remote import is_uri, publish
from rnncodec.sweeps.results import collect
from rnncodec.sweeps.spec import Sweep, SweepError, check_resources, check_train_size, load_spec, trial_key
from rnncodec.sweeps.storage import (
    DATA_FOLDER,
    SWEEP_FILE,
    check_tune_state,
    check_writable,
    child,
    filesystem,
    read_sweep_file,
    tune_storage,
    write_sweep_file,
)
from rnncodec.sweeps.wandb_logging import TrialLogger, check_version, resolve_mode

OBJECT_STORE_BYTES = 200 * 1024 * 1024
# Tune saves its experiment state at most this often (seconds); trials also find newer checkpoints
# themselves, so a driver killed between two saves loses nothing.
EXPERIMENT_STATE_PERIOD_S = "2"


def prepare_data(spec: Sweep, accept_unverified: bool = False) -> str:
    """Prepare (or reuse and verify) the sweep's data once, before any trial; return its location.
    ``accept_unverified``: use CIFAR archives whose md5 sums differ from the official ones."""
    from rnncodec.data.preparation import prepare
    from rnncodec.data.reader import open_split

    d = spec.data
    if d["location"]:
        for split in ("train", "val"):
            open_split(d["location"], split, verify_sha256=True, cache_dir=d["cache_dir"]).close()
        folder = d["location"]
    else:
        folder = str(prepare(d["source"], root=d["root"], rotations=d["rotations"], size=d["size"], seed=d["seed"],
                             cache_dir=d["cache_dir"], hard_patches=d["hard_patches"],
                             val_fraction=d["val_fraction"], accept_unverified=accept_unverified))
    with open_split(folder, "train", verify_sha256=False, cache_dir=d["cache_dir"]) as reader:
        prepared = len(reader)
    axis = spec.axes.get("train_size")
    for train_size in (spec.fixed.get("train_size"), *(axis.values if axis else ())):
        check_train_size(train_size, prepared)
    return folder


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a broken CUDA install means: no GPU
        return 0


def quiet() -> None:
    """Keep Ray's console noise down (the trial table and our own messages remain)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic trial table, with only the columns we choose
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_STATE_PERIOD_S)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _cluster_address(address: str | None) -> str | None:
    """``--address``, else ``RAY_ADDRESS`` (set for a driver started by ``ray job submit``), else None:
    start a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def _join(address: str, **kwargs: Any) -> None:
    """``ray.init(address=…)``, or SweepError in one line. With token authentication Ray takes the token
    itself (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); it is never printed."""
    import ray
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as exc:
        causes, cause = [], exc
        while cause is not None and len(causes) < 10:
            causes.append(cause)
            cause = cause.__cause__ or cause.__context__
        # Ray reports a refused token inside the text of its connection error, not as its type
        if any(isinstance(c, AuthenticationError) or "InvalidAuthToken" in str(c) for c in causes):
            raise SweepError(f"the Ray cluster at {address} refused this machine's authentication token; set "
                             "RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN "
                             "or ~/.ray/auth_token (`ray get-auth-token` on the head node prints it)") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SweepError(f"cannot join the Ray cluster at {address} ({first}); give the head node's HOST:PORT "
                         "(its GCS port, 6379 by default) and check that the cluster is running") from None


def start_ray(address: str | None, num_cpus: int | None) -> tuple[float, float]:
    """Join ``address`` or start a local Ray (dashboard off, bounded object store) unless one is
    already running in this process; return the cluster's CPUs and GPUs."""
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING}
        if address:
            _join(address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False, **kwargs)
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def _param_space(spec: Sweep) -> dict[str, Any]:
    from ray import tune

    kind = spec.search["type"]
    if kind == "optuna":
        space = {}
        for a in spec.axes.values():
            if a.kind in ("grid", "choice"):
                space[a.name] = tune.choice(list(a.values))
            elif a.kind == "uniform":
                space[a.name] = tune.uniform(*a.values)
            else:
                space[a.name] = tune.loguniform(*a.values)
        return {**space, "repeat": 0}
    if kind == "grid":
        space = {a.name: tune.grid_search(list(a.values)) for a in spec.axes.values()}
    else:
        space = {"point": tune.grid_search(spec.points())}
    return {**space, "repeat": tune.grid_search(list(range(spec.repeats)))}


def _reporter(spec: Sweep):
    from ray import tune

    params = [k for k in spec.axes] if spec.search["type"] != "random" else ["point"]
    return tune.CLIReporter(metric_columns={"epoch": "epoch", spec.metric: spec.metric.replace("val/", "val ")},
                            parameter_columns=[*params, "repeat"], max_report_frequency=30,
                            sort_by_metric=False, max_progress_rows=40)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(spec: Sweep, location: str, context: dict[str, Any], gpus_available: float, restore: bool = False):
    """The ``ray.tune.Tuner`` of a sweep (or, with ``restore``, the restored one)."""
    from ray import tune

    from rnncodec.sweeps.trainable import tune_trainable
    from rnncodec.sweeps.trial_status import StatusWriter

    trainable = tune.with_parameters(tune_trainable, sweep=spec.to_dict(), context=context)
    gpus = spec.resources["gpus"] if gpus_available > 0 else 0  # the same file runs on CPU-only machines
    trainable = tune.with_resources(trainable, {"cpu": spec.resources["cpus"], "gpu": gpus})
    storage_path, storage_fs = tune_storage(location)
    if restore:
        try:
            _, path = filesystem(location)
            return tune.Tuner.restore(location if storage_fs is None else path, trainable=trainable,
                                      storage_filesystem=storage_fs, resume_unfinished=True,
                                      resume_errored=True)
        except (ValueError, RuntimeError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise SweepError(f"{location} cannot be resumed ({first}); start it again with `rnncodec sweep run` "
                             "and a new --name") from None
    scheduler = None
    if spec.scheduler["type"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        s = spec.scheduler
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.fixed["epochs"], grace_period=s["grace_period"],
                                  reduction_factor=s["reduction_factor"], brackets=s["brackets"])
    search_alg = None
    if spec.search["type"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=spec.search["seed"])
    tune_config = tune.TuneConfig(
        metric=spec.metric, mode=spec.mode, scheduler=scheduler, search_alg=search_alg,
        num_samples=spec.search["samples"] if spec.search["type"] == "optuna" else 1,
        max_concurrent_trials=spec.concurrency, trial_dirname_creator=_trial_dirname,
        reuse_actors=True,  # a finished trial's worker (torch imported, data mapped) runs the next one
    )
    # Tune keeps the best checkpoints by the sweep's metric, and always the newest (to resume from).
    checkpoint_config = tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints, checkpoint_score_attribute=spec.metric,
                                              checkpoint_score_order=spec.mode)
    run_config = tune.RunConfig(
        name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
        checkpoint_config=checkpoint_config,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=1, progress_reporter=_reporter(spec), callbacks=[StatusWriter(location)],
    )
    return tune.Tuner(trainable, param_space=_param_space(spec), tune_config=tune_config, run_config=run_config)


def _settings(spec: Sweep, location: str) -> dict[str, Any] | None:
    mode = resolve_mode(spec.wandb["mode"])
    if mode == "disabled":
        return None
    check_version()
    return {"mode": mode, "project": spec.wandb["project"], "entity": spec.wandb["entity"],
            "group": spec.wandb["group"] or spec.name, "images_every": spec.wandb["images_every"],
            "images": spec.wandb["images"],
            "dir": None if is_uri(location) else str(Path(location) / "wandb")}


def run(spec_path: str | Path | Sweep, *, name: str | None = None, storage: str | None = None,
        address: str | None = None, num_cpus: int | None = None, say: Callable[[str], None] = print,
        fail_after_epoch: int | None = None, data_root: str | None = None,
        accept_unverified: bool = False) -> dict[str, Any]:
    """Validate, prepare data, start/join Ray and run a new sweep; return its summary.

    ``data_root`` replaces the file's ``data.root`` (where the CIFAR archives are); ``accept_unverified``
    uses archives whose md5 sums differ from the official ones. ``fail_after_epoch`` makes every trial
    crash once after that epoch, for tests of recovery.
    """
    spec = spec_path if isinstance(spec_path, Sweep) else load_spec(spec_path)
    if name is not None or storage is not None or data_root is not None:
        raw = spec.to_dict()
        raw["name"] = name or raw["name"]
        raw["storage"] = storage or raw["storage"]
        if data_root is not None:
            raw["data"]["root"] = data_root
        spec = Sweep.from_dict(raw)
    address = _cluster_address(address)
    location = child(spec.storage, spec.name)
    say(f"checking storage {location} …")
    check_writable(location)
    fs, path = filesystem(location)
    if fs.get_file_info(f"{path}/{SWEEP_FILE}").type != pafs.FileType.NotFound:
        raise SweepError(f"{location} already holds a sweep; continue it with `rnncodec sweep resume {location}` "
                         "or choose another --name")
    if address is None:
        check_resources(spec, float(num_cpus or os.cpu_count() or 1), float(_local_gpus()))
    wandb = _settings(spec, location)
    say(f"preparing data ({spec.data['source'] or spec.data['location']}) …")
    data = prepare_data(spec, accept_unverified)
    if not isinstance(fs, pafs.LocalFileSystem) and not is_uri(data):
        say(f"copying the prepared data to {child(location, DATA_FOLDER)}, from where every node reads it …")
        data = publish(data, child(location, DATA_FOLDER))
    context = {"data": data, "experiment": location, "uid": secrets.token_hex(4), "wandb": wandb,
               "fail_after_epoch": fail_after_epoch}
    write_sweep_file(location, {"spec": spec.to_dict(), "context": context, "created": time.time(), "version": 1})
    return _fit(spec, location, context, address, num_cpus, restore=False, say=say)


def resume(location: str, *, address: str | None = None, num_cpus: int | None = None,
           say: Callable[[str], None] = print) -> dict[str, Any]:
    """Continue the unfinished and errored trials of the sweep in ``location`` from their checkpoints."""
    address = _cluster_address(address)
    if not is_uri(location):
        location = str(Path(location).expanduser().resolve())
    stored = read_sweep_file(location)
    spec = stored["sweep"]
    context = dict(stored["context"], experiment=location)
    if address is None:
        check_resources(spec, float(num_cpus or os.cpu_count() or 1), float(_local_gpus()))
    check_tune_state(location, spec.trial_count(), say)
    return _fit(spec, location, context, address, num_cpus, restore=True, say=say)


def _fit(spec: Sweep, location: str, context: dict[str, Any], address: str | None, num_cpus: int | None,
         *, restore: bool, say: Callable[[str], None]) -> dict[str, Any]:
    quiet()
    cpus, gpus = start_ray(address, num_cpus)
    check_resources(spec, cpus, gpus)
    say(f"{'resuming' if restore else 'running'} sweep {spec.name}: {spec.trial_count()} trials, "
        f"{spec.resources['cpus']:g} CPU{' + %g GPU' % spec.resources['gpus'] if gpus and spec.resources['gpus'] else ''} "
        f"each, results in {location}")
    if context.get("wandb"):
        w = context["wandb"]
        where = f" (sync later: wandb sync {w['dir']}/wandb/offline-run-*)" if w["mode"] == "offline" and w["dir"] else ""
        say(f"W&B {w['mode']}: project {w['project']}, group {w['group']}{where}")
    if address and not is_uri(context["data"]):
        say(f"note: trials on other nodes read the data at {context['data']}; put data.cache_dir on shared "
            "storage or give data.location as a URI")
    tuner = build_tuner(spec, location, context, gpus, restore=restore)
    start = time.perf_counter()
    tuner.fit()
    _, trials = collect(location)
    done = sum(t["status"] == "TERMINATED" for t in trials)
    errors = sum(t["status"] == "ERROR" for t in trials)
    unfinished = [t for t in trials if t["status"] not in ("TERMINATED", "ERROR")]
    summary = {"location": location, "trials": len(trials), "finished": done, "errors": errors,
               "unfinished": len(unfinished), "seconds": time.perf_counter() - start}
    say(f"sweep {spec.name}: {done}/{len(trials)} trials finished in {summary['seconds']:.0f} s; "
        f"`rnncodec sweep report {location}` writes the figures")
    if unfinished:
        finish_interrupted_runs(context, unfinished)
        say(f"interrupted: {len(unfinished)} trials unfinished; `rnncodec sweep resume {location}` continues them "
            "from their checkpoints")
    if errors:
        say(f"{errors} trials failed; `rnncodec sweep resume {location}` retries them from their checkpoints")
    return summary


def finish_interrupted_runs(context: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """Mark the W&B runs of trials stopped mid-way as finished (exit code 1): their workers were ended
    before they could. ``resume`` reopens the same run ids."""
    settings = context.get("wandb")
    if not settings:
        return
    settings = dict(settings, dir=settings.get("dir") or tempfile.mkdtemp(prefix="rnncodec-wandb-"))
    for t in trials:
        if not t["history"]:
            continue  # never logged anything
        run_id = f"{context['uid']}-{trial_key(t['params'], t['repeat'] or 0)}"
        TrialLogger(settings, run_id, t["trial"], {}).finish(exit_code=1, timeout=30)
