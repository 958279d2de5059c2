"""How many cores a step may keep busy: this process's cores minus those a background step is using.

The runner tells a process step how many background steps run beside it (BUSY_ENV); the step's own parallel work
(calibration's worker processes, validation's children) then leaves those cores alone instead of fighting them.
"""
from __future__ import annotations

import os

BUSY_ENV = "SHERPA_NCNN_WIZARD_BUSY_CORES"  # set by core.pipeline.runner for a process step


def usable_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        busy = max(0, int(os.environ.get(BUSY_ENV, "0")))
    except ValueError:
        busy = 0
    return max(1, cores - busy)
