"""Closing the terminal (SIGHUP) or Ctrl-C stops the running step's whole process, never leaves it behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.paths import REPO



def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_run_stops_its_running_step_on_hangup_and_interrupt(tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli.main", "run", "--demo", "lstm", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    step_pids: set[int] = set()
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until the export step (a child process) is running
        if "Export with icefall" in line:
            while not step_pids and time.monotonic() < deadline:
                step_pids = _children_of(proc.pid)
            break
    assert step_pids, "the export step never started"
    proc.send_signal(sig)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest
    for pid in step_pids:
        end = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _alive(pid), f"step process {pid} outlived the run"
    assert (out / "manifest.json").is_file()  # the run recorded how it ended


def test_wizard_hang_up_cancels_a_running_step_and_quits():
    """The wizard's SIGHUP handler asks the runner to cancel and quits once the run has ended."""
    from tui.wizard.app import make_app

    app = make_app(None, None, None)
    cancelled = []

    class FakeRunner:
        def cancel(self):
            cancelled.append(True)

    class RunningWorker:
        from textual.worker import WorkerState
        state = WorkerState.RUNNING

    app.runner = FakeRunner()
    app.run_worker_ = RunningWorker()
    app.hang_up()
    assert cancelled == [True] and app._quit_after_run
