"""Weights & Biases from inside a trial: one run per trial, resumable, and never fatal.

Every call is guarded: if W&B fails (no network, a bad login, a full disk) the trial prints one
warning and goes on without it. The run id derives from the sweep and the trial's configuration, so
a resumed trial continues the same run (``resume="allow"``). ``finish`` runs in the trial's
``finally`` block. The API key is never read, printed or stored here: W&B finds it itself.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnncodec.sweeps.spec import SweepError

if TYPE_CHECKING:
    import numpy as np

FINISH_TIMEOUT_S = 120.0  # longest wait for a run to finish (uploads) before the trial moves on
MIN_VERSION = (0, 19, 10)  # wandb.init(reinit="finish_previous"); pyproject.toml asks for the same floor


def check_version() -> None:
    """Refuse, before a sweep starts, a wandb older than the features used here (the trials would
    otherwise go on without W&B, each with a warning)."""
    try:
        version = metadata.version("wandb")
    except metadata.PackageNotFoundError:
        raise SweepError("wandb is not installed; `pip install 'wandb>=0.19.10'` or set wandb.mode: disabled") from None
    numbers = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if numbers < MIN_VERSION:
        floor = ".".join(map(str, MIN_VERSION))
        raise SweepError(f"wandb {version} is older than {floor}, which rnncodec needs; "
                         f"`pip install 'wandb>={floor}'` or set wandb.mode: disabled")


def logged_in() -> bool:
    """Whether a W&B API key is configured (``WANDB_API_KEY`` or a netrc entry); the key is not read."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC") or None)
    except (OSError, netrc.NetrcParseError):
        return False
    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "api.wandb.ai")).rstrip("/")
    return rc.authenticators(host) is not None


def resolve_mode(mode: str) -> str:
    """``auto`` → ``online`` when logged in, else ``offline``; ``WANDB_MODE`` in the environment wins."""
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    if mode == "auto":
        return "online" if logged_in() else "offline"
    return mode


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` so dashboards can slice by every parameter."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TrialLogger:
    """A W&B run for one trial; a no-op when ``settings`` is None, the mode is disabled, or W&B failed."""

    def __init__(self, settings: dict[str, Any] | None, run_id: str, name: str, config: dict[str, Any]) -> None:
        self.run = None
        self.init_seconds = 0.0
        if not settings or settings.get("mode") == "disabled":
            return
        start = time.perf_counter()
        try:
            import wandb

            directory = Path(settings["dir"])
            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                id=run_id,
                resume="allow",
                name=name,
                project=settings.get("project"),
                entity=settings.get("entity"),
                group=settings.get("group"),
                job_type="trial",
                dir=str(directory),
                mode=settings["mode"],
                config=flatten(config),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off", init_timeout=60, x_disable_stats=True),
            )
            # Charts run along epochs; the W&B step is the trial's report count, which only grows.
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")
        except Exception as exc:  # W&B trouble never stops a trial
            self._warn("could not start", exc)
        self.init_seconds = time.perf_counter() - start

    def next_step(self) -> int:
        """The lowest step W&B still accepts: known for a resumed online run, else 0 (a step that an
        offline run already holds is dropped when it is synced); a large number without a run."""
        if self.run is None:
            return 1 << 62
        return int(self.run.step) if self.run.resumed else 0

    def _warn(self, what: str, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"rnncodec sweep: W&B {what} ({type(exc).__name__}: {first}); the trial goes on without W&B",
              file=sys.stderr)
        self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as exc:
            self._warn("logging failed", exc)

    def images(self, grid: np.ndarray, caption: str, step: int) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({"val/reconstructions": wandb.Image(grid, caption=caption)}, step=step)
        except Exception as exc:
            self._warn("image logging failed", exc)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)
        except Exception as exc:
            self._warn("table logging failed", exc)

    def finish(self, exit_code: int = 0, timeout: float = FINISH_TIMEOUT_S) -> None:
        """Finish the run, waiting at most ``timeout`` seconds (an online upload may stall): the
        run's files stay on disk either way, and ``wandb sync`` uploads what is missing."""
        if self.run is None:
            return
        run, self.run = self.run, None
        errors: list[BaseException] = []

        def close() -> None:
            try:
                run.finish(exit_code=exit_code)
                import wandb

                wandb.teardown()  # stop the service now, not in an atexit hook of a dying Ray worker
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        worker = threading.Thread(target=close, name="wandb-finish", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            print(f"rnncodec sweep: W&B run {run.id} did not finish within {timeout:.0f} s; the trial goes on, "
                  f"`wandb sync {run.dir.rsplit('/files', 1)[0] if getattr(run, 'dir', None) else ''}` uploads it later",
                  file=sys.stderr)
        elif errors:
            self._warn("finish failed", errors[0])
