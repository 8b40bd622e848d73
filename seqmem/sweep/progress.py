"""Progress of a sweep on the console: a line per started and per finished trial, and a status line
with each running trial's latest step and metric once a minute (Ray's own tables are turned off).

The outcome of every finished trial is kept as the line gives it: the sweep's tables are made from these,
never read back from Ray Tune's files, which a full disk may have left cut short."""

import os
import pickle
import time
from typing import Any, Optional

from ray import tune

from seqmem.sweep.config import Sweep
from seqmem.sweep.summary import TrialRow
from seqmem.sweep.trial import error_message


class Progress(tune.Callback):
    """Ray Tune callback, run in the driver, that prints the sweep's progress.

    Args:
        sweep: the sweep (run names, budget, the metric to show).
        every_s: seconds between two status lines of the running trials.
    """

    def __init__(self, sweep: Sweep, every_s: float = 60.0):
        self.sweep = sweep
        self.every_s = every_s
        self.total = len(sweep.points())
        self.finished = 0
        self.latest: dict[str, dict[str, Any]] = {}  # trial id -> its last report
        self.outcomes: dict[str, tuple[Optional[dict], Optional[str]]] = {}  # run name -> (last report, error)
        self.last_status = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        print(f"started  {self.sweep.trial_name(trial.config)}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        self.latest[trial.trial_id] = result

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._finished(trial, self.latest.get(trial.trial_id), None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        # Ray has just written the error to the trial's local folder; trial.get_pickled_error() reads the
        # storage copy, which is synced later.
        path = trial.pickled_error_file
        message = f"see {trial.error_file}"
        if path and os.path.isfile(path):
            try:
                with open(path, "rb") as file:
                    message = error_message(pickle.load(file))
            except (OSError, EOFError, pickle.UnpicklingError):  # cut short: the disk of Ray's session is full
                pass
        self._finished(trial, None, message)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last_status < self.every_s:
            return
        self.last_status = time.monotonic()
        running = [t for t in trials if t.status == "RUNNING"]
        parts = [self._latest(t) for t in running]
        print(f"running ({len(running)}, {self.finished}/{self.total} finished): {'; '.join(parts)}", flush=True)

    def _finished(self, trial: Any, result: Optional[dict], error: Optional[str]) -> None:
        self.finished += 1
        row = TrialRow.of(self.sweep, trial.config, result, error)
        self.outcomes[row.name] = (result, error)
        print(f"[{self.finished}/{self.total}] {row.name}: {row.outcome(self.sweep.budget)}", flush=True)

    def _latest(self, trial: Any) -> str:
        result = self.latest.get(trial.trial_id, {})
        metric = (
            self.sweep.solved.metric
            if self.sweep.solved
            else next((m for m in ("val/acc", "val/loss") if m in result), None)
        )
        text = f"{self.sweep.trial_name(trial.config)} step {result.get('step', 0)}"
        return text + (f" {metric} {result[metric]:.4g}" if metric in result else "")
