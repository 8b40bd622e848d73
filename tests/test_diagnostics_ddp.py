"""Under 2-process CPU DDP (gloo), every diagnostic tag is written exactly once per logged step.

Lightning's ``strategy="ddp"`` relaunches the running script for rank 1, so the fit runs in a
subprocess executing this file (a relaunched pytest would rerun the whole session).
"""

import subprocess
import sys
from collections import Counter
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_diagnostics import LIGHTNING_TAGS, all_diagnostics, expected_tags, fit


def written_tags(root: Path) -> tuple[int, Counter]:
    """How many event files lie under ``root``, and how often each (tag, step) was written in them (scalars and
    images), over every event file any rank wrote."""
    written: Counter = Counter()
    files = sorted(root.rglob("events.out.tfevents.*"))
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            written.update((tag, event.step) for event in accumulator.Scalars(tag))
        for tag in accumulator.Tags()["images"]:
            written.update((tag, event.step) for event in accumulator.Images(tag))
    return len(files), written


def test_ddp_logs_every_tag_exactly_once(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    files, logged = written_tags(tmp_path)
    assert files == 1, "only rank 0 writes"
    expected = expected_tags(logged=[4, 9], periodic=[0, 5])
    expected |= {"grad_time/heatmap": [0, 5], "sensitivity/heatmap": [0, 5]}
    ours = {key: count for key, count in logged.items() if key[0] not in LIGHTNING_TAGS}
    assert ours == {(tag, step): 1 for tag, tag_steps in expected.items() for step in tag_steps}


if __name__ == "__main__":
    fit(Path(sys.argv[1]), all_diagnostics(5), max_steps=10, devices=2, cell="gru")
