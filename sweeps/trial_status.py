"""The trials' states, as the driver sees them, kept in the sweep folder's ``trials.json`` through Tune's
public callback interface: ``sweep status`` and ``sweep report`` read it (and the checkpoints' own
``meta.json``), never Tune's private, pickled experiment state."""

from __future__ import annotations

import json
import time
from typing import Any

from ray import tune

from rnncodec.sweeps.storage import TRIALS_FILE, filesystem, write_bytes


class StatusWriter(tune.Callback):
    """Rewrites ``trials.json`` whenever a trial changes state or fails: ``{trial folder: {"status",
    "failures", "error", "config", "started"}}``, ``started`` being the Unix time this driver last started
    the trial (its actor running; null before)."""

    def __init__(self, location: str) -> None:
        self.fs, self.path = filesystem(location)
        self.last: dict[str, Any] | None = None
        self.started: dict[str, float] = {}

    def _write(self, trials: list[Any]) -> None:
        states = {f"trial_{t.trial_id}": {"status": t.status, "failures": t.num_failures,
                                          "error": t.error_file and str(t.error_file),
                                          "config": t.config, "started": self.started.get(t.trial_id)}
                  for t in trials}
        if states != self.last:
            write_bytes(self.fs, f"{self.path}/{TRIALS_FILE}",
                        json.dumps(states, indent=1, sort_keys=True, default=str).encode())
            self.last = states

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._write(trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.time()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._write(trials)
