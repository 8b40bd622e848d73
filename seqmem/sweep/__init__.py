"""Seeded sweeps on Ray Tune: ``seqmem sweep CONFIG`` runs a grid of ``seqmem fit`` trials and
summarises steps to solve over seeds.

- ``config.py``: the sweep config format (documented there) and its checks;
- ``trial.py``: one trial in a Ray worker: skip if done, resume if interrupted, else train;
- ``report.py``: live validation metrics from a trial to Ray Tune;
- ``progress.py``: the console lines while the sweep runs;
- ``summary.py``, ``plot.py``: trials.csv, summary.csv / .md (aggregated over seeds) and summary.png;
- ``run.py``: the command line and the Ray Tune run.
"""

from seqmem.sweep.config import Sweep, load_sweep
from seqmem.sweep.run import main, run_sweep
from seqmem.sweep.summary import ConfigSummary, Spread, TrialRow, summarise

__all__ = ["ConfigSummary", "Spread", "Sweep", "TrialRow", "load_sweep", "main", "run_sweep", "summarise"]
