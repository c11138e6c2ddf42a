"""One trial of a sweep: train a codec for a number of epochs, report and checkpoint every epoch.

``run_trial`` is the whole trial and knows nothing of Ray: it is handed a ``report(metrics, folder)``
function and the folders where its earlier checkpoints may lie. ``tune_trainable`` is the Ray Tune
function trainable around it (``ray.tune.report`` / ``ray.tune.get_checkpoint``).

Checkpoints hold everything needed to continue exactly: model, optimizer, learning-rate schedule,
torch RNG states (the binarizer is stochastic), completed epochs, the loader's position, samples seen
and wall time. Resuming looks at every checkpoint of the trial, newest epoch first: a checkpoint that
cannot be read is reported on stderr and the next older one is tried; when none is readable the trial
restarts from epoch 0 (and says so). Newer checkpoints than Tune's own record (its experiment state is
saved every few seconds, so a killed driver may lag behind) are found the same way.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

import data
from codec.checkpoint import model_from_state, model_state
from codec.errors import CodecError
from codec.model import CodecConfig, RNNCodec
from codec.training import evaluate, train_step
from data.loader import BatchLoader
from sweeps.spec import SweepError, trial_key, trial_seed
from sweeps.wandb_logging import TrialLogger, image_grid

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = "rnncodec-trial"
VERSION = 1


class InjectedFailure(RuntimeError):
    """Raised once by the ``test_fail_after_epoch`` test hook."""


# --------------------------------------------------------------------------- storage helpers


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or a URI (``s3://…``, ``gs://…``, ``file://…``)."""
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except Exception as exc:
            raise SweepError(f"storage {location!r} cannot be opened ({exc}); give a local folder or a pyarrow URI") from None
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.readall()


def checkpoints(fs: pafs.FileSystem, trial_dir: str) -> list[tuple[int, str]]:
    """``(epoch, folder)`` of the trial's checkpoint folders, newest epoch first (from their meta.json)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    except Exception:
        return []
    found = []
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            epoch = int(json.loads(_read_bytes(fs, f"{info.path}/{META_FILE}"))["epoch"])
        except Exception:
            epoch = -1  # unknown: tried last
        found.append((epoch, info.path))
    return sorted(found, key=lambda t: (t[0], t[1]), reverse=True)


def is_complete(fs: pafs.FileSystem, folder: str, meta: dict[str, Any]) -> bool:
    """Whether the state file has the size meta.json recorded: a copy into storage cut short by a
    killed driver leaves meta.json whole but the state file short."""
    return "state_bytes" not in meta or fs.get_file_info(f"{folder}/{STATE_FILE}").size == meta["state_bytes"]


def read_state(fs: pafs.FileSystem, folder: str, key: str | None = None) -> dict[str, Any]:
    """The trial state in checkpoint ``folder``; SweepError saying why when it cannot be used."""
    try:
        raw = _read_bytes(fs, f"{folder}/{STATE_FILE}")
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (OSError, pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SweepError(f"checkpoint {folder} is unreadable ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
        raise SweepError(f"checkpoint {folder} is not an rnncodec trial checkpoint of version {VERSION}")
    if key is not None and state.get("trial_key") != key:
        raise SweepError(f"checkpoint {folder} belongs to another trial ({state.get('trial_key')}, not {key})")
    return state


def latest_state(places: list[tuple[pafs.FileSystem, str]], key: str,
                 warn: Callable[[str], None]) -> tuple[dict[str, Any] | None, str | None]:
    """The newest readable state among the checkpoint folders of ``places`` (trial folders)."""
    seen, candidates = set(), []
    for fs, trial_dir in places:
        for epoch, folder in checkpoints(fs, trial_dir):
            if folder not in seen:
                seen.add(folder)
                candidates.append((epoch, folder, fs))
    candidates.sort(key=lambda t: (t[0], t[1]), reverse=True)
    for i, (_, folder, fs) in enumerate(candidates):
        try:
            return read_state(fs, folder, key), folder
        except SweepError as exc:
            fallback = f"trying the older {candidates[i + 1][1]}" if i + 1 < len(candidates) else "restarting the trial from epoch 0"
            warn(f"{exc}; {fallback}")
    return None, None


# --------------------------------------------------------------------------- training pieces


class SubsetReader:
    """A fixed subset of a ShardReader's images, indexable like one (what BatchLoader needs)."""

    def __init__(self, reader: data.ShardReader, indices: np.ndarray) -> None:
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
    if train_size > size:
        raise SweepError(f"train_size {train_size} exceeds the {size} prepared training images; lower it, "
                         "or prepare more (data.size, data.rotations)")
    return np.sort(np.random.default_rng([seed, 7]).permutation(size)[:train_size])


def spread(count: int, total: int) -> np.ndarray:
    """``count`` evenly spaced indices of ``total`` (a fixed evaluation set)."""
    count = min(count, total)
    return np.linspace(0, total - 1, count).round().astype(np.int64)


def quality_metrics(prefix: str, q: dict[str, list[float]]) -> dict[str, float]:
    """``prefix/psnr``, ``/ms_ssim``, ``/residual`` at the last iteration, ``/loss`` (L1 residual summed
    over iterations), and per iteration ``…_i{k}`` when there are several."""
    n = len(q["psnr"])
    out = {f"{prefix}/psnr": q["psnr"][-1], f"{prefix}/ms_ssim": q["ms_ssim"][-1],
           f"{prefix}/residual": q["residual"][-1], f"{prefix}/loss": float(sum(q["residual"]))}
    if n > 1:
        for k in range(n):
            for name in ("psnr", "ms_ssim", "residual"):
                out[f"{prefix}/{name}_i{k + 1}"] = q[name][k]
    return out


def build(params: dict[str, Any], seed: int, device: torch.device, total_steps: int):
    """Model, optimizer and learning-rate schedule of a trial (the model initialised from ``seed``)."""
    torch.manual_seed(seed)
    config = CodecConfig(cell=params["cell"], mode=params["reconstruction"], width=params["width"],
                         activation=params["activation"])
    model = RNNCodec(config).to(device)
    lr, wd = params["lr"], params["weight_decay"]
    if params["optimizer"] == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    elif params["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    kind = params["lr_schedule"]

    def factor(step: int) -> float:
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        if kind == "step":
            return 0.1 if step >= 2 * total_steps // 3 else 1.0
        return 1.0

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return model, optimizer, schedule


def _endless(loader: BatchLoader) -> Iterator[torch.Tensor]:
    while True:
        yield from loader


def _save(folder: Path, state: dict[str, Any]) -> None:
    """state.pt and meta.json into ``folder``, each written to a temporary name and renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / STATE_FILE)
    tmp = folder / f".{META_FILE}.tmp"
    meta = {k: state[k] for k in ("epoch", "trial_key", "repeat", "params", "history", "seed")}
    meta["state_bytes"] = (folder / STATE_FILE).stat().st_size
    tmp.write_text(json.dumps(meta, default=float))
    os.replace(tmp, folder / META_FILE)


def _warn(message: str) -> None:
    print(f"rnncodec sweep: warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the trial


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
) -> dict[str, Any]:
    """Train one configuration; ``report(metrics, checkpoint_folder)`` once per epoch.

    ``places`` are trial folders whose ``checkpoint_*`` sub-folders are tried (newest epoch first)
    before starting from scratch. Returns the last metrics.
    """
    wall_start = time.perf_counter()
    key, seed = trial_key(params, repeat), trial_seed(params, repeat)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = bool(params["amp"]) and device.type == "cuda"

    train_reader = data.open_split(data_location, "train", verify_sha256=False)
    val_reader = data.open_split(data_location, "val", verify_sha256=False)
    subset = training_subset(len(train_reader), params["train_size"], data_seed)
    train_set = SubsetReader(train_reader, subset)
    val_pixels = torch.from_numpy(val_reader.images(spread(params["val_size"], len(val_reader))))
    train_pixels = torch.from_numpy(train_set.images(spread(params["val_size"], len(train_set))))

    loader = BatchLoader(train_set, params["batch_size"], seed=seed)
    steps_per_epoch = params["steps_per_epoch"] or len(loader)
    epochs, iterations = params["epochs"], params["iterations"]
    model, optimizer, schedule = build(params, seed, device, epochs * steps_per_epoch)

    state, restored_from = latest_state(list(places), key, warn)
    counters = {"epoch": 0, "steps": 0, "samples_seen": 0, "wall_time": 0.0, "train_time": 0.0}
    if state is not None:
        try:
            restored = model_from_state(state["model"], restored_from)
            model.load_state_dict(restored.state_dict())
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["scheduler"])
            loader.load_state_dict(state["loader"])
        except (CodecError, data.DataError, KeyError, ValueError, RuntimeError) as exc:
            raise SweepError(f"checkpoint {restored_from} does not fit trial {trial_name} ({exc}); "
                             "delete the trial's checkpoints to restart it") from None
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        counters = {k: state[k] for k in counters}
        history = [dict(h) for h in state.get("history", [])][: counters["epoch"]]
    else:
        history = []
    started_at = counters["epoch"]
    fresh = state is None

    config = {**params, "repeat": repeat, "seed": seed, "trial_key": key, "bpp": 0.125 * iterations,
              **(wandb_settings or {}).get("config", {})}
    logger = TrialLogger(wandb_settings, run_id or key, trial_name, config)
    wandb_time = logger.init_seconds
    setup_time = time.perf_counter() - wall_start
    shown = val_pixels[: (wandb_settings or {}).get("images", 8)]
    batches = _endless(loader)
    metrics: dict[str, Any] = {}
    exit_code = 1
    try:
        for epoch in range(started_at, epochs):
            epoch_start = time.perf_counter()
            losses, in_steps = [], 0.0
            for _ in range(steps_per_epoch):
                batch = next(batches)
                t0 = time.perf_counter()
                losses.append(train_step(model, optimizer, batch, iterations, params["loss"], amp=amp,
                                         grad_clip=params["grad_clip"]))
                in_steps += time.perf_counter() - t0
                schedule.step()
                counters["steps"] += 1
                counters["samples_seen"] += len(batch)
            train_q = evaluate(model, train_pixels, iterations, amp=amp)
            val_q = evaluate(model, val_pixels, iterations, amp=amp, keep=64)
            recon = val_q["reconstructions"]
            counters["epoch"] = epoch + 1
            counters["train_time"] += in_steps
            now = time.perf_counter()
            counters["wall_time"] += now - wall_start
            wall_start = now
            metrics = {
                "epoch": epoch + 1, "steps": counters["steps"], "samples_seen": counters["samples_seen"],
                "wall_time": counters["wall_time"], "train_time": counters["train_time"],
                "epoch_time": now - epoch_start, "lr": optimizer.param_groups[0]["lr"],
                "bpp": 0.125 * iterations, "iterations": iterations, "repeat": repeat, "seed": seed,
                "trial_key": key, "resumed_from_epoch": started_at if not fresh else -1,
                "train/step_loss": float(np.mean(losses)) if losses else float("nan"),
                **quality_metrics("train", train_q), **quality_metrics("val", val_q),
            }
            metrics = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in metrics.items()}
            metrics["setup_time"], metrics["wandb_time"] = setup_time, wandb_time
            history.append({k: v for k, v in metrics.items() if k != "trial_key"})
            t_log = time.perf_counter()
            every = (wandb_settings or {}).get("images_every", 0)
            logger.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=epoch + 1)
            if every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
                grid = image_grid(shown.numpy(), [r[: len(shown)].numpy() for r in recon])
                logger.images(grid, f"epoch {epoch + 1}: originals, then iterations 1..{iterations}", epoch + 1)
            if epoch + 1 == epochs:
                rows = [[k + 1, 0.125 * (k + 1), val_q["psnr"][k], val_q["ms_ssim"][k]] for k in range(iterations)]
                logger.table("val/rate_distortion", ["iterations", "bpp", "psnr", "ms_ssim"], rows, epoch + 1)
            wandb_time += time.perf_counter() - t_log
            state = {
                "format": FORMAT, "version": VERSION, "trial_key": key, "params": params, "repeat": repeat, "seed": seed,
                "history": history, "model": model_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(), "loader": loader.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
                **counters,
            }
            folder = Path(tempfile.mkdtemp(prefix="rnncodec-ckpt-"))
            try:
                _save(folder, state)
                report(metrics, str(folder))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if fresh and params.get("test_fail_after_epoch") == epoch + 1 and epoch + 1 < epochs:
                raise InjectedFailure(f"test_fail_after_epoch: injected failure after epoch {epoch + 1}")
        exit_code = 0
        return metrics
    finally:
        logger.finish(exit_code)
        train_reader.close()
        val_reader.close()


def tune_trainable(config: dict[str, Any], *, sweep: dict[str, Any], context: dict[str, Any]) -> None:
    """The Ray Tune function trainable (bind ``sweep`` and ``context`` with ``tune.with_parameters``).

    ``context``: ``data`` (prepared folder or URI), ``experiment`` (the sweep folder or URI),
    ``wandb`` (resolved W&B settings or None) and ``uid`` (the sweep's id, part of W&B run ids).
    """
    import logging

    from ray import tune

    from sweeps.spec import Sweep

    for name in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" on every epoch
        logging.getLogger(name).setLevel(logging.WARNING)
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
    run_trial(params, repeat, data_location=context["data"], report=report, places=places,
              wandb_settings=wandb_settings, run_id=run_id, trial_name=label, data_seed=spec.data["seed"])
