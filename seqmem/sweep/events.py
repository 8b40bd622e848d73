"""Scalars read back from a trial's TensorBoard events: the one place the sweep reads event files."""

from pathlib import Path


def read_scalars(run_dir: Path, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each of ``tags`` in the run's events, by step; an empty list where never logged."""
    if not tags:
        return {}
    # Imported here: a sweep without records or curves never needs TensorBoard's event reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    logged = set(events.Tags()["scalars"])
    return {tag: sorted((s.step, s.value) for s in events.Scalars(tag)) if tag in logged else [] for tag in tags}
