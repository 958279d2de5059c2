"""How many cores a step may keep busy: this process's cores minus those the other running steps use.

The runner tells a process step how many background steps run beside it when it starts (BUSY_ENV); the step's own
parallel work (calibration's worker processes, validation's children) then leaves those cores alone instead of
fighting them. A step that runs long beside others (a background validation) also reads who is running now
(RUNNING_ENV: a file the runner rewrites whenever that changes; one line per running background step, plus
``foreground`` while the run is busy with its foreground steps), so it takes a second core when one comes free.
"""
from __future__ import annotations

import os

BUSY_ENV = "SHERPA_NCNN_WIZARD_BUSY_CORES"  # set by core.pipeline.runner for a process step
RUNNING_ENV = "SHERPA_NCNN_WIZARD_RUNNING"  # the runner's file of what runs now
SLOT_ENV = "SHERPA_NCNN_WIZARD_SLOT"  # this step's line in that file (its id, or FOREGROUND)
FOREGROUND = "foreground"


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cores() -> int:
    try:
        busy = max(0, int(os.environ.get(BUSY_ENV, "0")))
    except ValueError:
        busy = 0
    return max(1, all_cores() - busy)


def live() -> bool:
    """Does this process know what runs beside it now (a step of a run), not only when it started?"""
    return bool(os.environ.get(RUNNING_ENV))


def usable_cores_now() -> int:
    """usable_cores as of now: the cores minus the other entries of the runner's file (outside a run, or when the
    file cannot be read, usable_cores)."""
    path, me = os.environ.get(RUNNING_ENV), os.environ.get(SLOT_ENV, "")
    if not path:
        return usable_cores()
    try:
        with open(path, encoding="utf-8") as f:
            others = [line for line in f.read().split() if line != me]
    except OSError:
        return usable_cores()
    return max(1, all_cores() - len(others))


def write_running(path, entries: list[str]) -> None:
    """The runner's side: replace the file atomically (a reader never sees half of it; no fsync: it only says what
    runs now, and is rewritten at every step), through core.common.atomic's temp name (attributable if left behind)."""
    from pathlib import Path

    from core.common.atomic import temp_name
    tmp = temp_name(Path(path))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(f"{e}\n" for e in entries))
    os.replace(tmp, path)
