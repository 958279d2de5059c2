"""The runner: streaming logs, failure detection, hints, cancel, resume."""
import asyncio
import json
import os
import sys
import time

import pytest

from core.pipeline.events import LogLines, Progress, RunFinished, StepFinished, StepStarted
from core.pipeline.runner import LineSplitter, Plan, Runner, Step, StepError

PY = sys.executable


def py_step(id_, code, outputs=(), inputs=(), **kw):
    return Step(id_, id_.title(), argv=[PY, "-c", code], outputs=list(outputs), inputs=list(inputs), **kw)


def run(plan, resume=False, during=None):
    events = []
    runner = Runner(plan, events.append, resume=resume)

    async def main():
        task = asyncio.ensure_future(runner.run())
        if during:
            await during(runner, events)
        return await task
    status = asyncio.run(main())
    return status, events, runner


def finished(events):
    return {e.step: e for e in events if isinstance(e, StepFinished)}


def test_line_splitter_handles_cr_ansi_and_bad_utf8():
    s = LineSplitter()
    lines = s.feed(b"10%\r20%\r\x1b[32mgreen\x1b[0m\nbad \xff byte\npart")
    lines += s.feed(b"ial\xe2\x96")  # a split multi-byte character
    lines += s.feed(b"\x81 end\n")
    assert lines == ["10%", "20%", "green", "bad \ufffd byte", "partial\u2581 end"]
    assert s.flush() == []


def test_process_output_is_streamed_logged_and_progress_parsed(tmp_path):
    code = ("import sys\n"
            "for i in range(6): print(f'############# pass_level{i}', file=sys.stderr)\n"
            "print('############# pass_ncnn'); open(sys.argv[1], 'w').write('x')")
    out = tmp_path / "o.txt"
    step = Step("pnnx-encoder", "pnnx", argv=[PY, "-c", code, str(out)], outputs=[out], parser="pnnx")
    status, events, _ = run(Plan([step], tmp_path))
    assert status == "ok"
    logged = [line for e in events if isinstance(e, LogLines) for line in e.lines]
    assert "############# pass_ncnn" in logged and "############# pass_level3" in logged
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 7 and progress[-1].note == "pass_ncnn"
    log = (tmp_path / "logs" / "01-pnnx-encoder.log").read_text()
    assert log.startswith("$ ") and "pass_level0" in log
    assert isinstance(events[0], StepStarted) and isinstance(events[-1], RunFinished)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["steps"][0]["outputs"][str(out)]["size"] == 1


def test_nonzero_exit_fails_with_tail_and_hint(tmp_path):
    step = py_step("export", "print('Traceback'); print(\"ModuleNotFoundError: No module named 'k2'\"); raise SystemExit(1)")
    after = py_step("pnnx", "print('never')")
    status, events, _ = run(Plan([step, after], tmp_path))
    assert status == "failed"
    f = finished(events)["export"]
    assert f.status == "failed" and f.error == "exited with code 1"
    assert "No module named 'k2'" in f.tail[-1] and "icefall's Python" in f.hint
    assert "pnnx" not in finished(events)


def test_missing_or_empty_output_fails_even_with_exit_0(tmp_path):
    empty = tmp_path / "empty.bin"
    step = py_step("a", f"open({str(empty)!r}, 'w')", outputs=[empty])
    status, events, _ = run(Plan([step], tmp_path))
    assert status == "failed" and "is empty" in finished(events)["a"].error
    step = py_step("b", "pass", outputs=[tmp_path / "nope"])
    status, events, _ = run(Plan([step], tmp_path))
    assert "was not written" in finished(events)["b"].error


def test_signal_death_is_described(tmp_path):
    step = py_step("crash", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    status, events, _ = run(Plan([step], tmp_path))
    assert "SIGSEGV" in finished(events)["crash"].error


def test_missing_program_is_a_clear_failure(tmp_path):
    step = Step("pnnx", "pnnx", argv=[str(tmp_path / "no-such-pnnx")])
    status, events, _ = run(Plan([step], tmp_path))
    assert status == "failed" and "was not found" in finished(events)["pnnx"].error


def test_cancel_stops_the_whole_process_group_quickly(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
            "print('started', flush=True); time.sleep(60)")
    done = tmp_path / "done.txt"
    before = py_step("first", f"open({str(done)!r}, 'w').write('ok')", outputs=[done])
    step = py_step("long", code)

    async def cancel_when_started(runner, events):
        while not any(isinstance(e, LogLines) and "started" in e.lines for e in events):
            await asyncio.sleep(0.02)
        runner.cancel()

    t0 = time.monotonic()
    status, events, _ = run(Plan([before, step, py_step("after", "pass")], tmp_path), during=cancel_when_started)
    assert time.monotonic() - t0 < 10
    assert status == "cancelled"
    f = finished(events)
    assert f["long"].status == "cancelled" and "after" not in f
    assert done.read_text() == "ok"  # finished outputs stay
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the grandchild process is still alive")


def test_resume_reruns_only_what_changed(tmp_path):
    a_out, b_out, c_out = (tmp_path / n for n in ("a.txt", "b.txt", "c.txt"))
    flag = tmp_path / "b-may-pass"
    copy = "import sys, shutil; shutil.copy(sys.argv[1], sys.argv[2]); print('ran')"
    steps = lambda: [
        Step("a", "A", argv=[PY, "-c", f"open({str(a_out)!r}, 'w').write('a1'); print('ran')"], outputs=[a_out]),
        Step("b", "B", argv=[PY, "-c", f"import os, sys, shutil\nassert os.path.exists({str(flag)!r}), 'flag missing'\n"
                                        "shutil.copy(sys.argv[1], sys.argv[2]); print('ran')", str(a_out), str(b_out)],
             inputs=[a_out], outputs=[b_out]),
        Step("c", "C", argv=[PY, "-c", copy, str(b_out), str(c_out)], inputs=[b_out], outputs=[c_out]),
    ]
    status, events, _ = run(Plan(steps(), tmp_path))
    assert status == "failed" and finished(events)["b"].status == "failed"
    flag.write_text("1")
    status, events, _ = run(Plan(steps(), tmp_path), resume=True)
    f = finished(events)
    assert status == "ok"
    assert (f["a"].status, f["b"].status, f["c"].status) == ("skipped", "ok", "ok")
    status, events, _ = run(Plan(steps(), tmp_path), resume=True)
    assert {e.status for e in finished(events).values()} == {"skipped"}
    c_out.write_text("tampered")
    status, events, _ = run(Plan(steps(), tmp_path), resume=True)
    f = finished(events)
    assert (f["a"].status, f["b"].status, f["c"].status) == ("skipped", "skipped", "ok")
    state = json.loads((tmp_path / "run-state.json").read_text())
    assert set(state["steps"]) == {"a", "b", "c"}


def test_in_process_step_logs_progress_and_errors(tmp_path):
    out = tmp_path / "x"

    def work(ctx):
        ctx.log("\x1b[1mhello\x1b[0m")
        ctx.progress(1, 2, "half")
        out.write_text("x")

    def broken(ctx):
        raise StepError("tokens.txt has no <blk>", hint="make it from bpe.model")

    status, events, _ = run(Plan([Step("w", "W", func=work, outputs=[out]), Step("b", "B", func=broken)], tmp_path))
    assert status == "failed"
    assert any(isinstance(e, LogLines) and e.lines == ("hello",) for e in events)
    assert any(isinstance(e, Progress) and e.note == "half" for e in events)
    f = finished(events)["b"]
    assert f.error == "tokens.txt has no <blk>" and f.hint == "make it from bpe.model"


def test_a_tool_whose_exit_code_lies_is_judged_by_verify_and_before_can_refuse(tmp_path):
    out = tmp_path / "o.txt"
    seen = []

    def verify(lines):
        seen.extend(lines)
        return None if "all written" in lines else "the tool did not say it wrote everything"

    liar = py_step("liar", f"open({str(out)!r}, 'w').write('x'); print('half written')", outputs=[out], verify=verify)
    status, events, _ = run(Plan([liar], tmp_path))
    assert status == "failed" and "did not say it wrote everything" in finished(events)["liar"].error
    assert "half written" in seen  # verify reads the step's whole log
    honest = py_step("honest", f"open({str(out)!r}, 'w').write('x'); print('all written')", outputs=[out],
                     verify=verify)
    assert run(Plan([honest], tmp_path))[0] == "ok"

    def refuse():
        raise StepError("the input carries weights the tool drops", hint="use the built-in one")
    never = py_step("never", f"open({str(out)!r}, 'w').write('x')", outputs=[out], before=refuse)
    status, events, _ = run(Plan([never], tmp_path))
    done = finished(events)["never"]
    assert status == "failed" and "carries weights" in done.error and done.hint == "use the built-in one"
    assert not out.exists()  # the process never ran


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root; skipped elsewhere)."""
    import subprocess
    d = tmp_path / "full"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield d
    subprocess.run(["umount", str(d)])


def test_a_full_disk_ends_the_run_with_a_sentence_not_a_traceback(full_disk):
    out = full_disk / "out"

    def fill(ctx):
        with open(full_disk / "filler", "wb") as fh:  # the disk fills up while the step runs
            try:
                fh.write(b"x" * (1 << 20))
            except OSError:
                pass
    plan = Plan([Step("fill", "Fill", func=fill), Step("next", "Next", argv=[PY, "-c", "print('x' * 100000)"])], out)
    status, events, _ = run(plan)
    assert status == "failed"
    failed = [e for e in events if isinstance(e, StepFinished) and e.status == "failed"]
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert failed and "the disk is full" in failed[0].error and "--resume" in failed[0].error
    assert finished and finished[-1].status == "failed"


# -- background steps ------------------------------------------------------------

def _wait_for_file(path, then=""):
    """A child that waits (up to 30 s) for ``path``: it can only finish when a step running beside it writes it."""
    return (f"import os, time\nfor _ in range(3000):\n    if os.path.exists({str(path)!r}): break\n"
            f"    time.sleep(0.01)\nelse:\n    raise SystemExit('never saw the file')\n{then}")


def test_a_background_step_runs_beside_the_next_steps_and_is_waited_for(tmp_path):
    signal_file, bg_out = tmp_path / "fg-ran.txt", tmp_path / "bg.txt"
    bg = py_step("bg", _wait_for_file(signal_file, f"open({str(bg_out)!r}, 'w').write('bg')"), outputs=[bg_out],
                 background=True)
    fg = py_step("fg", f"open({str(signal_file)!r}, 'w').write('x')", outputs=[signal_file])
    reader = py_step("reader", f"assert open({str(bg_out)!r}).read() == 'bg'", inputs=[bg_out], needs=("bg",))
    status, events, runner = run(Plan([bg, fg, reader], tmp_path))
    assert status == "ok"  # bg could only finish because fg ran while it waited
    order = [(type(e).__name__, e.step) for e in events if isinstance(e, (StepStarted, StepFinished))]
    assert order.index(("StepFinished", "bg")) < order.index(("StepStarted", "reader"))
    assert order.index(("StepStarted", "fg")) < order.index(("StepFinished", "bg"))
    state = json.loads((tmp_path / "run-state.json").read_text())
    assert state["steps"]["bg"]["outputs"][str(bg_out)]["size"] == 2  # recorded like any step: resume skips it
    status, events, _ = run(Plan([bg, fg, reader], tmp_path), resume=True)
    assert {e.status for e in finished(events).values()} == {"skipped"}


def test_a_failed_background_step_stops_the_run_at_the_next_step(tmp_path):
    bg = py_step("bg", "raise SystemExit(3)", background=True)

    def wait_for_bg(ctx):  # the foreground step ends only once the background one has failed
        for _ in range(3000):
            if "bg" in runner_ref[0].results:
                return
            time.sleep(0.01)

    runner_ref = []
    fg = Step("fg", "Fg", func=wait_for_bg)
    after = py_step("after", "print('never')")

    async def grab(runner, events):
        runner_ref.append(runner)
    status, events, _ = run(Plan([bg, fg, after], tmp_path), during=grab)
    f = finished(events)
    assert status == "failed" and f["bg"].status == "failed" and f["fg"].status == "ok" and "after" not in f
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "failed"


def test_cancel_stops_a_background_step_and_the_current_one(tmp_path):
    bg = py_step("bg", "import time; print('bg up', flush=True); time.sleep(60)", background=True)
    fg = py_step("fg", "import time; print('fg up', flush=True); time.sleep(60)")

    async def cancel_when_both_run(runner, events):
        seen = lambda word: any(isinstance(e, LogLines) and word in e.lines for e in events)  # noqa: E731
        while not (seen("bg up") and seen("fg up")):
            await asyncio.sleep(0.02)
        runner.cancel()
    t0 = time.monotonic()
    status, events, _ = run(Plan([bg, fg, py_step("after", "pass")], tmp_path), during=cancel_when_both_run)
    assert time.monotonic() - t0 < 20
    f = finished(events)
    assert status == "cancelled" and f["bg"].status == f["fg"].status == "cancelled" and "after" not in f


def test_a_step_beside_a_background_one_is_told_how_many_cores_it_keeps_busy(tmp_path):
    """A foreground step leaves the background steps' cores alone; a background step leaves one core to the
    steps that run beside it."""
    from core.common.cores import BUSY_ENV
    signal_file = tmp_path / "fg-ran.txt"
    show = f"import os; print('busy=' + os.environ['{BUSY_ENV}'])"
    bg = py_step("bg", show + "\n" + _wait_for_file(signal_file), background=True)
    fg = py_step("fg", show + f"; open({str(signal_file)!r}, 'w').write('x')", outputs=[signal_file])
    after = py_step("after", show, needs=("bg",))
    status, events, _ = run(Plan([bg, fg, after], tmp_path))
    logged = {e.step: line for e in events if isinstance(e, LogLines) for line in e.lines if line.startswith("busy=")}
    assert status == "ok" and logged == {"bg": "busy=1", "fg": "busy=1", "after": "busy=0"}


def test_a_background_step_learns_when_the_foreground_frees_its_core(tmp_path):
    """logs/.running lists the background steps and the foreground while it runs its steps; when the foreground
    waits for a background step, that step's process sees the foreground gone (and may take its core)."""
    from core.common.cores import RUNNING_ENV, SLOT_ENV
    read_file, signal_file = tmp_path / "bg-read.txt", tmp_path / "fg-ran.txt"
    watch = (f"import os, time\npath, me = os.environ['{RUNNING_ENV}'], os.environ['{SLOT_ENV}']\n"
             "print('first=' + ','.join(sorted(open(path).read().split())) + ' me=' + me)\n"
             f"open({str(read_file)!r}, 'w').write('x')\n" + _wait_for_file(signal_file) +
             "\nfor _ in range(3000):\n    now = open(path).read().split()\n    if 'foreground' not in now: break\n"
             "    time.sleep(0.01)\nprint('alone=' + ','.join(now))\n")
    bg = py_step("bg", watch, background=True)
    fg = py_step("fg", _wait_for_file(read_file, f"open({str(signal_file)!r}, 'w').write('x')"), outputs=[signal_file])
    after = py_step("after", "import os; print('slot=' + os.environ['" + SLOT_ENV + "'])", needs=("bg",))
    status, events, _ = run(Plan([bg, fg, after], tmp_path))
    lines = [line for e in events if isinstance(e, LogLines) for line in e.lines]
    assert status == "ok" and "first=bg,foreground me=bg" in lines and "alone=bg" in lines and "slot=foreground" in lines
    assert not (tmp_path / "logs" / ".running").exists()  # gone with the run


def test_usable_cores_now_counts_what_runs_beside(tmp_path, monkeypatch):
    from core.common import cores
    running = tmp_path / ".running"
    monkeypatch.setattr(cores, "all_cores", lambda: 4)
    monkeypatch.delenv(cores.BUSY_ENV, raising=False)
    monkeypatch.delenv(cores.RUNNING_ENV, raising=False)
    assert cores.usable_cores_now() == 4  # outside a run: usable_cores
    monkeypatch.setenv(cores.RUNNING_ENV, str(running))
    monkeypatch.setenv(cores.SLOT_ENV, "validate")
    cores.write_running(running, ["validate", "validate-int8", "foreground"])
    assert cores.usable_cores_now() == 2
    cores.write_running(running, ["validate"])
    assert cores.usable_cores_now() == 4
    cores.write_running(running, [f"s{i}" for i in range(9)])
    assert cores.usable_cores_now() == 1
    running.unlink()
    monkeypatch.setenv(cores.BUSY_ENV, "1")
    assert cores.usable_cores_now() == 3  # the file gone: what the step was told at its start


def test_usable_cores_leave_the_busy_ones_alone(monkeypatch):
    from core.common.cores import BUSY_ENV, usable_cores
    monkeypatch.delenv(BUSY_ENV, raising=False)
    all_cores = usable_cores()
    monkeypatch.setenv(BUSY_ENV, "1")
    assert usable_cores() == max(1, all_cores - 1)
    monkeypatch.setenv(BUSY_ENV, "999")
    assert usable_cores() == 1
    monkeypatch.setenv(BUSY_ENV, "junk")
    assert usable_cores() == all_cores


def test_a_background_step_waits_for_the_background_step_it_needs_without_holding_up_the_others(tmp_path):
    first_out, signal_file = tmp_path / "first.txt", tmp_path / "fg-ran.txt"
    # bg1 can only finish once fg ran; bg2 needs bg1; fg must therefore start while bg2 waits
    bg1 = py_step("bg1", _wait_for_file(signal_file, f"open({str(first_out)!r}, 'w').write('1')"), outputs=[first_out],
                  background=True)
    bg2 = py_step("bg2", f"assert open({str(first_out)!r}).read() == '1'", inputs=[first_out], background=True,
                  needs=("bg1",))
    fg = py_step("fg", f"open({str(signal_file)!r}, 'w').write('x')", outputs=[signal_file])
    last = py_step("last", "pass", needs=("bg1", "bg2"))
    status, events, _ = run(Plan([bg1, bg2, fg, last], tmp_path))
    assert status == "ok", [e for e in events if isinstance(e, StepFinished)]
    order = [(type(e).__name__, e.step) for e in events if isinstance(e, (StepStarted, StepFinished))]
    assert order.index(("StepFinished", "bg1")) < order.index(("StepStarted", "bg2"))
    assert order.index(("StepStarted", "fg")) < order.index(("StepFinished", "bg1"))
    assert order[-2:] == [("StepStarted", "last"), ("StepFinished", "last")]


def test_a_process_killed_inside_native_code_says_where_and_what_to_do(tmp_path):
    """The validation process runs torch and ncnn on the user's model in-process (sherpa-ncnn has its own child);
    a crash there ends the step with the signal, faulthandler's Python lines in the log, and a hint."""
    code = ("import ctypes, faulthandler; faulthandler.enable(); print('numeric check ...', flush=True); "
            "ctypes.string_at(0)")
    status, events, _ = run(Plan([py_step("validate", code)], tmp_path))
    done = finished(events)["validate"]
    assert status == "failed" and done.error.startswith("killed by SIGSEGV")
    assert "Fatal Python error: Segmentation fault" in done.tail
    assert "sherpa-ncnn-wizard doctor" in done.hint and "--resume" in done.hint
