"""One trial of a sweep: train a codec for a number of epochs, report and checkpoint every epoch.

``run_trial`` is the whole trial and knows nothing of Ray: it is handed a ``report(metrics, folder)``
function and the folders where its earlier checkpoints may lie. ``tune_trainable`` is the Ray Tune
function trainable around it (``ray.tune.report`` / ``ray.tune.get_checkpoint``). The training itself
is :class:`rnncodec.codec.training.Trainer`, the same loop as ``rnncodec train``.

Checkpoints hold everything needed to continue exactly: model, optimizer, learning-rate schedule,
torch RNG states (the binarizer is stochastic), completed epochs, the loader's position, samples seen
and wall time. Resuming looks at every checkpoint of the trial, newest epoch first: a checkpoint that
cannot be read is reported on stderr and the next older one is tried; when none is readable the trial
restarts from epoch 0 (and says so).

W&B gets each epoch only after its checkpoint is stored, at step = the trial's report count (which
only grows, across attempts): when a resume falls back past an unreadable checkpoint, the epochs run
again are logged after the ones W&B already holds instead of being rejected, and every point carries
its ``epoch``, the x-axis of the trial's charts.

Every epoch also records where and when it ran: the Ray node (``node_id``, ``node_ip``), the device and
``CUDA_VISIBLE_DEVICES``, the Unix times of the attempt's first step and of the epoch's end. With
``val_probes`` > 0 the epoch's history entry also holds ``probes``: validations at log-spaced steps
inside the epoch (kept in the checkpoint for the report's curves against steps; Tune and W&B get the
epoch's numbers only, and W&B the whole curve as the table ``val/by_steps`` after the last epoch).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from rnncodec.codec.checkpoint import model_from_state, model_state
from rnncodec.codec.errors import CodecError
from rnncodec.codec.model import CodecConfig, RNNCodec
from rnncodec.codec.options import BPP_PER_ITERATION
from rnncodec.codec.training import TrainConfig, Trainer
from rnncodec.data.errors import DataError
from rnncodec.data.images import image_grid
from rnncodec.data.loader import BatchLoader
from rnncodec.data.reader import ShardReader, open_split
from rnncodec.sweeps.spec import SweepError, check_train_size, trial_key, trial_seed
from rnncodec.sweeps.storage import (
    META_FILE,
    STATE_FILE,
    TRIAL_FORMAT,
    TRIAL_VERSION,
    checkpoint_index,
    checkpoints,
    filesystem,
    read_state,
    validations,
)
from rnncodec.sweeps.wandb_logging import TrialLogger


class InjectedFailure(RuntimeError):
    """Raised once by ``fail_after_epoch``, the crash that tests of recovery inject."""


def latest_state(places: list[tuple[pafs.FileSystem, str]], key: str, warn: Callable[[str], None]
                 ) -> tuple[dict[str, Any] | None, str | None, int]:
    """The newest readable state among the checkpoint folders of ``places`` (trial folders), its folder,
    and the highest report number any checkpoint shows (readable or not)."""
    seen, candidates, reports = set(), [], 0
    for fs, trial_dir in places:
        for epoch, folder, meta, _ in checkpoints(fs, trial_dir):
            if folder not in seen:
                seen.add(folder)
                candidates.append((epoch, folder, fs))
                reports = max(reports, checkpoint_index(folder) + 1, int((meta or {}).get("report", epoch)))
    candidates.sort(key=lambda t: (t[0], checkpoint_index(t[1])), reverse=True)
    for i, (_, folder, fs) in enumerate(candidates):
        try:
            return read_state(fs, folder, key), folder, reports
        except SweepError as exc:
            fallback = (f"trying the older {candidates[i + 1][1]}" if i + 1 < len(candidates)
                        else "restarting the trial from epoch 0")
            warn(f"{exc}; {fallback}")
    return None, None, reports


class SubsetReader:
    """A fixed subset of a ShardReader's images, indexable like one (what BatchLoader needs)."""

    def __init__(self, reader: ShardReader, indices: np.ndarray) -> None:
        self.reader, self.indices = reader, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, indices: Any, out: np.ndarray | None = None) -> np.ndarray:
        return self.reader.images(self.indices[np.asarray(indices, np.int64)], out)


def training_subset(size: int, train_size: int | None, seed: int) -> np.ndarray:
    """Indices of ``train_size`` training images: a prefix of one fixed permutation, so smaller sets
    are nested in larger ones and every repeat of a configuration sees the same images."""
    if train_size is None:
        return np.arange(size)
    check_train_size(train_size, size)
    return np.sort(np.random.default_rng([seed, 7]).permutation(size)[:train_size])


def spread(count: int, total: int) -> np.ndarray:
    """``count`` evenly spaced indices of ``total`` (a fixed evaluation set)."""
    count = min(count, total)
    return np.linspace(0, total - 1, count).round().astype(np.int64)


def quality_metrics(prefix: str, q: dict[str, list[float]]) -> dict[str, float]:
    """``prefix/psnr``, ``/ms_ssim``, ``/residual`` at the last iteration, ``/loss`` (L1 residual summed
    over iterations), and the same per iteration: ``…_i1`` … ``…_i{n}``."""
    out = {f"{prefix}/psnr": q["psnr"][-1], f"{prefix}/ms_ssim": q["ms_ssim"][-1],
           f"{prefix}/residual": q["residual"][-1], f"{prefix}/loss": sum(q["residual"])}
    for k in range(len(q["psnr"])):
        for name in ("psnr", "ms_ssim", "residual"):
            out[f"{prefix}/{name}_i{k + 1}"] = q[name][k]
    return {k: float(v) for k, v in out.items()}  # plain floats: checkpoints load with weights_only=True


def train_config(params: dict[str, Any], total_steps: int) -> TrainConfig:
    """The :class:`TrainConfig` of a trial's training parameters."""
    return TrainConfig(iterations=params["iterations"], loss=params["loss"], loss_growth=params["loss_growth"],
                       optimizer=params["optimizer"], lr=params["lr"], weight_decay=params["weight_decay"],
                       lr_schedule=params["lr_schedule"],
                       total_steps=total_steps, grad_clip=params["grad_clip"], amp=params["amp"],
                       deterministic=params["deterministic"], cuda_graph=params["cuda_graph"])


def _endless(loader: BatchLoader) -> Iterator[torch.Tensor]:
    while True:
        yield from loader


def _save(folder: Path, state: dict[str, Any]) -> None:
    """state.pt and meta.json into a fresh ``folder`` (Tune copies it into storage)."""
    torch.save(state, folder / STATE_FILE)
    meta = {k: state[k] for k in ("epoch", "report", "trial_key", "repeat", "params", "history", "seed")}
    meta["state_bytes"] = (folder / STATE_FILE).stat().st_size
    (folder / META_FILE).write_text(json.dumps(meta, default=float))


def probe_steps(per_octave: int, after: int, before: int) -> list[int]:
    """The steps in (after, before) where ``val_probes`` validates: ``per_octave`` per doubling of the
    step count, log-spaced from step 8, so that batch sizes can be compared at equal steps."""
    if per_octave < 1:
        return []
    first = math.ceil(per_octave * math.log2(max(after + 1, 8)) - 1e-9)
    steps = (round(2 ** (k / per_octave)) for k in range(first, math.ceil(per_octave * math.log2(max(before, 2)))))
    return sorted({s for s in steps if after < s < before})


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numeric entries of ``metrics`` (what W&B charts; the node and device are text)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _warn(message: str) -> None:
    print(f"rnncodec sweep: warning: {message}", file=sys.stderr, flush=True)


def trial_device(gpus_assigned: bool, trial_name: str, warn: Callable[[str], None] = _warn) -> torch.device:
    """CUDA where this process sees a GPU; otherwise the CPU, with one warning when the trial was given a
    GPU (or a share of one) that CUDA cannot reach, e.g. on a node that declares GPUs it lacks."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if gpus_assigned:
        warn(f"trial {trial_name} was given GPU {os.environ.get('CUDA_VISIBLE_DEVICES', '?')} "
             "(CUDA_VISIBLE_DEVICES) but CUDA is not available here; training on the CPU")
    return torch.device("cpu")


def run_trial(
    params: dict[str, Any],
    repeat: int,
    *,
    data_location: str,
    report: Callable[[dict[str, Any], str], None],
    places: list[tuple[pafs.FileSystem, str]] = (),
    wandb_settings: dict[str, Any] | None = None,
    run_id: str | None = None,
    trial_name: str = "trial",
    data_seed: int = 0,
    device: torch.device | None = None,
    warn: Callable[[str], None] = _warn,
    fail_after_epoch: int | None = None,
    where: dict[str, str] | None = None,
    staging: Path | None = None,
) -> dict[str, Any]:
    """Train one configuration; ``report(metrics, checkpoint_folder)`` once per epoch.

    ``places`` are trial folders whose ``checkpoint_*`` sub-folders are tried (newest epoch first)
    before starting from scratch. ``fail_after_epoch`` raises :class:`InjectedFailure` once, right after
    that epoch's checkpoint, in an attempt that started from scratch. ``where`` (e.g. the node) is
    recorded with every epoch. ``staging``, a folder of this trial's own, holds each checkpoint until
    ``report`` has copied it; what a killed attempt left there is removed at the start (without it the
    system's temporary folder is used, and a killed attempt leaves one checkpoint there). A trial whose
    training loss turns non-finite (``diverged`` in its metrics) stops once that epoch is stored and
    reported, and so does a resume of it. Returns the last metrics.
    """
    wall_start = time.perf_counter()
    key, seed = trial_key(params, repeat), trial_seed(params, repeat)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    iterations, epochs = params["iterations"], params["epochs"]

    train_reader = open_split(data_location, "train", verify_sha256=False)
    val_reader = open_split(data_location, "val", verify_sha256=False)
    train_set = SubsetReader(train_reader, training_subset(len(train_reader), params["train_size"], data_seed))
    val_pixels = torch.from_numpy(val_reader.images(spread(params["val_size"], len(val_reader))))
    train_pixels = torch.from_numpy(train_set.images(spread(params["val_size"], len(train_set))))
    loader = BatchLoader(train_set, params["batch_size"], seed=seed)
    steps_per_epoch = params["steps_per_epoch"] or len(loader)

    torch.manual_seed(seed)
    model = RNNCodec(CodecConfig(cell=params["cell"], mode=params["reconstruction"], width=params["width"],
                                 activation=params["activation"], gain_growth=params["gain_growth"])).to(device)
    trainer = Trainer(model, train_config(params, epochs * steps_per_epoch))

    state, restored_from, reports = latest_state(list(places), key, warn)
    started_at, wall_time, history = 0, 0.0, []
    if state is not None:
        try:
            model.load_state_dict(model_from_state(state["model"], restored_from).state_dict())
            trainer.load_state_dict(state["trainer"])
            loader.load_state_dict(state["loader"])
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and state["rng"].get("cuda"):
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            started_at, wall_time = int(state["epoch"]), float(state["wall_time"])
        except (CodecError, DataError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise SweepError(f"checkpoint {restored_from} does not fit trial {trial_name} ({exc}); "
                             "delete the trial's checkpoints to restart it") from None
        history = [dict(h) for h in state.get("history", [])][:started_at]

    config = {**params, "repeat": repeat, "seed": seed, "trial_key": key, "bpp": BPP_PER_ITERATION * iterations,
              **(wandb_settings or {}).get("config", {})}
    logger = TrialLogger(wandb_settings, run_id or key, trial_name, config)
    if history and logger.next_step() <= state["report"]:
        logger.log(_numbers(history[-1]), step=state["report"])  # the attempt before may have stopped before logging it
    wandb_time = logger.init_seconds
    setup_time = time.perf_counter() - wall_start
    first_step_at = time.time()
    shown = val_pixels[: (wandb_settings or {}).get("images", 8)]
    images_every = (wandb_settings or {}).get("images_every", 0)
    batches = _endless(loader)
    # a trial whose loss went non-finite stops after saving that epoch (its weights are NaN from then on): a
    # retry of an attempt that stopped there, or a resume, must not train on
    diverged = bool(history) and bool(history[-1].get("diverged"))
    metrics: dict[str, Any] = dict(history[-1]) if diverged else {}
    exit_code = 1
    try:
        for epoch in range(epochs + 1 if diverged else started_at + 1, epochs + 1):
            epoch_start = time.perf_counter()
            losses, probes, end = [], [], trainer.steps + steps_per_epoch
            for step in probe_steps(params["val_probes"], trainer.steps, end):
                losses += trainer.run(batches, step - trainer.steps)
                probes.append({"steps": step, "samples_seen": trainer.samples_seen, "train_time": trainer.train_time,
                               **quality_metrics("val", trainer.evaluate(val_pixels))})
            losses += trainer.run(batches, end - trainer.steps)
            diverged = not all(map(math.isfinite, losses))
            train_q = trainer.evaluate(train_pixels)
            val_q = trainer.evaluate(val_pixels, keep=len(shown))
            now = time.perf_counter()
            wall_time += now - wall_start
            wall_start = now
            reports += 1
            metrics = {
                "epoch": epoch, "steps": trainer.steps, "samples_seen": trainer.samples_seen,
                "wall_time": wall_time, "train_time": trainer.train_time, "epoch_time": now - epoch_start,
                "lr": trainer.lr, "bpp": BPP_PER_ITERATION * iterations, "iterations": iterations,
                "repeat": repeat, "seed": seed, "trial_key": key,
                "resumed_from_epoch": started_at if state is not None else -1,
                "train/step_loss": float(np.mean(losses)), "setup_time": setup_time, "wandb_time": wandb_time,
                "first_step_at": first_step_at, "epoch_end_at": time.time(), "device": device.type, **(where or {}),
                "diverged": diverged,
                **quality_metrics("train", train_q), **quality_metrics("val", val_q),
            }
            history.append({k: v for k, v in metrics.items() if k != "trial_key"}
                           | ({"probes": probes} if probes else {}))
            saved = {
                "format": TRIAL_FORMAT, "version": TRIAL_VERSION, "trial_key": key, "params": params,
                "repeat": repeat, "seed": seed, "history": history, "epoch": epoch, "report": reports,
                "wall_time": wall_time, "model": model_state(model), "trainer": trainer.state_dict(),
                "loader": loader.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            }
            folder = Path(tempfile.mkdtemp(prefix="rnncodec-ckpt-", dir=staging))
            try:
                _save(folder, saved)
                report(metrics, str(folder))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            t_log = time.perf_counter()
            logger.log(_numbers(metrics), step=reports)
            if images_every and (epoch % images_every == 0 or epoch == epochs):
                grid = image_grid([shown.numpy(), *(r.numpy() for r in val_q["reconstructions"])], scale=3)
                logger.images(grid, f"epoch {epoch}: originals, then iterations 1..{iterations}", reports)
            if epoch == epochs:
                rows = [[k + 1, BPP_PER_ITERATION * (k + 1), val_q["psnr"][k], val_q["ms_ssim"][k]]
                        for k in range(iterations)]
                logger.table("val/rate_distortion", ["iterations", "bpp", "psnr", "ms_ssim"], rows, reports)
                if params["val_probes"]:
                    curve = [[v["steps"], v["samples_seen"], v["val/ms_ssim"], v["val/psnr"]] for v in validations(history)]
                    logger.table("val/by_steps", ["steps", "samples_seen", "ms_ssim", "psnr"], curve, reports)
            wandb_time += time.perf_counter() - t_log
            if diverged:
                loss = next(v for v in losses if not math.isfinite(v))
                warn(f"{trial_name} diverged in epoch {epoch} (a training loss of {loss}); it stops here, its other "
                     "epochs not run: lower lr or set grad_clip")
                break
            if state is None and fail_after_epoch == epoch and epoch < epochs:
                raise InjectedFailure(f"injected failure after epoch {epoch}")
        exit_code = 0
        return metrics
    finally:
        logger.finish(exit_code)
        train_reader.close()
        val_reader.close()


def _quiet_exit_hook(unraisable: Any) -> None:
    """``sys.unraisablehook`` of a trial's worker: when Tune stops an idle worker, Ray's SIGTERM handler
    raises SystemExit wherever Python is, often inside a garbage-collection callback, which prints a
    spurious "Exception ignored … SystemExit" traceback; everything else is reported as usual."""
    if not isinstance(unraisable.exc_value, SystemExit):
        sys.__unraisablehook__(unraisable)


def private_staging(name: str) -> Path:
    """``name`` in this user's private folder of the system's temporary area (created with mode 0700;
    refused if it is a link or anyone else's). Trials stage their checkpoints there, not in the folder
    ``tune.get_context().get_trial_dir()`` gives: for the first trial of each worker that folder lies among
    the driver's artifacts, which Tune copies to the sweep's storage, staged checkpoints included."""
    root = Path(tempfile.gettempdir()) / f"rnncodec-staging-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
    except OSError as exc:
        raise SweepError(f"cannot make the folder {root} for staging checkpoints ({exc.strerror}); "
                         "remove what is there, or set TMPDIR to a writable folder") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SweepError(f"{root} is not a folder that only this user can open; remove it and run again")
    return root / name


def tune_trainable(config: dict[str, Any], *, sweep: dict[str, Any], context: dict[str, Any]) -> None:
    """The Ray Tune function trainable (bind ``sweep`` and ``context`` with ``tune.with_parameters``).

    ``context``: ``data`` (prepared folder or URI), ``experiment`` (the sweep folder or URI),
    ``wandb`` (resolved W&B settings or None), ``uid`` (the sweep's id, part of W&B run ids) and, for
    tests of recovery only, ``fail_after_epoch``.
    """
    import logging

    import ray
    from ray import tune

    from rnncodec.sweeps.spec import Sweep

    for name in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" on every epoch
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.unraisablehook = _quiet_exit_hook
    spec = Sweep.from_dict(sweep)
    params = spec.trial_params(config)
    repeat = int(config.get("repeat", 0))
    trial_dir = Path(tune.get_context().get_trial_dir())
    places = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        places.append((checkpoint.filesystem, os.path.dirname(checkpoint.path.rstrip("/"))))
    exp_fs, exp_path = filesystem(context["experiment"])
    places.append((exp_fs, f"{exp_path}/{trial_dir.name}"))
    wandb_settings = None
    if context.get("wandb"):
        wandb_settings = dict(context["wandb"])
        if not wandb_settings.get("dir"):
            wandb_settings["dir"] = str(trial_dir)
        # flattened by the logger: data.source, data.rotations, … next to batch_size, train_size, iterations
        wandb_settings["config"] = {"sweep": spec.name, "data": spec.data, "axes": sorted(spec.axes)}
    run_id = f"{context['uid']}-{trial_key(params, repeat)}"
    label = " ".join(f"{k}={params[k]:.4g}" if isinstance(params[k], float) else f"{k}={params[k]}"
                     for k in spec.axes) or spec.name
    label = f"{label} r{repeat}"

    def report(metrics: dict[str, Any], folder: str) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    torch.set_num_threads(max(1, int(spec.resources["cpus"])))
    where = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    staging = private_staging(f"{context['uid']}-{tune.get_context().get_trial_id()}")
    try:
        run_trial(params, repeat, data_location=context["data"], report=report, places=places,
                  wandb_settings=wandb_settings, run_id=run_id, trial_name=label, data_seed=spec.data["seed"],
                  device=trial_device(bool(ray.get_gpu_ids()), label),
                  fail_after_epoch=context.get("fail_after_epoch"), where=where, staging=staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
