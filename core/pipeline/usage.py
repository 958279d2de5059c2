"""What each step cost: CPU seconds and peak resident memory, for the manifest.

A process step is started through a tiny wrapper (``wrap_argv``) that waits for
it with ``os.wait4`` and writes the child's own resource usage (its waited-for
descendants included) and exit status to a file: CPU and peak RSS of that step
alone. An in-process step runs in the runner's process (and starts ncnn children
of its own): ``InProcessUsage`` takes the process's CPU time delta (all its
threads: an upper bound), its peak RSS during the step (the kernel's high-water
mark, reset at the step's start where Linux allows), and the peak of the children
it started (sampled from /proc while they run, plus the kernel's children peak
when that rose during the step).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import threading
from pathlib import Path

_WRAPPER = r"""
import json, os, signal, subprocess, sys
out, argv = sys.argv[1], sys.argv[2:]
proc = subprocess.Popen(argv)
for sig in (signal.SIGTERM, signal.SIGINT):  # the group gets the signal: let the step decide, then report
    signal.signal(sig, signal.SIG_IGN)
while True:
    try:
        _, status, ru = os.wait4(proc.pid, 0)
        break
    except ChildProcessError:
        sys.exit(0)
    except InterruptedError:
        continue
rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
try:
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"returncode": rc, "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3),
                   "peak_mb": round(ru.ru_maxrss / 1024, 1)}, fh)
    os.replace(tmp, out)
except OSError:  # no record (a full disk): end the way the step ended, so the runner still judges it right
    if rc < 0:
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)
sys.exit(0)
"""


def _resolvable(program: str, cwd: Path | None) -> bool:
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else Path(cwd or ".") / program
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(program) is not None


def wrap_argv(argv: list[str], cwd: Path | None, usage_file: Path) -> list[str]:
    """``argv`` run through the measuring wrapper; unchanged when the program cannot be found (so the runner's own
    'not found' / 'not executable' sentences still apply) or on a system without ``os.wait4``."""
    if not hasattr(os, "wait4") or not _resolvable(argv[0], cwd):
        return list(argv)
    return [sys.executable, "-c", _WRAPPER, str(usage_file), *argv]


def read_usage(usage_file: Path) -> dict | None:
    """The wrapper's record (returncode, cpu_seconds, peak_mb), then the file is removed; None when absent."""
    try:
        data = json.loads(usage_file.read_text())
    except (OSError, ValueError):
        return None
    usage_file.unlink(missing_ok=True)
    return data if isinstance(data, dict) else None


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _status_kb(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int, skip: set[int] | frozenset = frozenset()) -> list[int]:
    """Every descendant of ``pid``, leaving out the ``skip`` processes and theirs."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in skip:
            continue
        kids = []
        try:  # every thread's children: an in-process step starts its children from a worker thread
            for task in Path(f"/proc/{p}/task").iterdir():
                kids += (task / "children").read_text().split()
        except OSError:
            continue
        kids = [k for k in map(int, kids) if k not in skip]
        found += kids
        todo += kids
    return found


class InProcessUsage:
    """CPU seconds and peak RSS of an in-process step, measured from construction to ``stop()``."""

    SAMPLE_SECONDS = 0.2

    def __init__(self, skip_pids=lambda: ()) -> None:
        # a background step's process is this process's child too: ``skip_pids`` (its pid, while it runs) keeps it
        # out of the sampled peak, and ``foreign_finished`` takes its CPU back out when it is reaped meanwhile
        self._skip_pids = skip_pids
        self._foreign_cpu = 0.0
        self._foreign_reaped = False
        try:  # reset this process's high-water mark, so VmHWM is this step's peak (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._cpu0 = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
        self._children_max0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self._child_peak_kb = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = os.getpid()
        while not self._done.wait(self.SAMPLE_SECONDS):
            for pid in _children(me, set(self._skip_pids())):
                self._child_peak_kb = max(self._child_peak_kb, _status_kb(pid, "VmHWM"))

    def foreign_finished(self, cpu_seconds: float | None) -> None:
        """A background step's process ended during this step: its CPU is not this step's."""
        self._foreign_cpu += cpu_seconds or 0.0
        self._foreign_reaped = True

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - self._cpu0 - self._foreign_cpu
        own_kb = _status_kb("self", "VmHWM") if self._hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        # the reaped children's maximum may be a background step's: then only the sampled peaks count
        reaped = children_max if children_max > self._children_max0 and not self._foreign_reaped else 0
        child_kb = max(self._child_peak_kb, reaped)
        return {"cpu_seconds": round(max(0.0, cpu), 3), "peak_mb": round(max(own_kb, child_kb) / 1024, 1),
                "peak_process_mb": round(own_kb / 1024, 1), "peak_children_mb": round(child_kb / 1024, 1)}


def cost_lines(out_dir: Path) -> list[str]:
    """The run's slowest step and its peak memory, from OUT/manifest.json (the front-ends' summary lines)."""
    try:
        steps = json.loads((Path(out_dir) / "manifest.json").read_text()).get("steps", [])
    except (OSError, ValueError, AttributeError):
        return []
    timed = [s for s in steps if isinstance(s, dict) and isinstance(s.get("seconds"), (int, float))
             and s.get("status") == "ok"]
    if not timed:
        return []
    total = sum(s["seconds"] for s in timed)
    slow = max(timed, key=lambda s: s["seconds"])
    cpu = f", CPU {slow['cpu_seconds']:.1f} s" if isinstance(slow.get("cpu_seconds"), (int, float)) else ""
    lines = [f"slowest step: {slow['id']} {slow['seconds']:.1f} s of {total:.1f} s ({slow['seconds'] / total:.0%}"
             f"{cpu})" if total else f"slowest step: {slow['id']}"]
    peaks = [s for s in timed if isinstance(s.get("peak_mb"), (int, float))]
    if peaks:
        top = max(peaks, key=lambda s: s["peak_mb"])
        lines.append(f"peak memory: {top['peak_mb']:.0f} MB ({top['id']})")
    return lines
