"""Each step's CPU seconds and peak memory in manifest.json, and the summary lines made from them."""
import asyncio
import json
import sys

from core.pipeline.runner import Plan, Runner, Step
from core.pipeline.usage import cost_lines

PY = sys.executable
ALLOC = "b = bytearray({mb} * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); import time; t = time.process_time()\n" \
        "while time.process_time() - t < 0.3: pass\n"


def _run(steps, tmp_path):
    events = []
    status = asyncio.run(Runner(Plan(steps, tmp_path), events.append).run())
    return status, json.loads((tmp_path / "manifest.json").read_text())


def test_process_steps_record_their_own_cpu_and_peak(tmp_path):
    steps = [Step("small", "Small", argv=[PY, "-c", ALLOC.format(mb=1)]),
             Step("big", "Big", argv=[PY, "-c", ALLOC.format(mb=300)])]
    status, manifest = _run(steps, tmp_path)
    assert status == "ok"
    by_id = {s["id"]: s for s in manifest["steps"]}
    assert by_id["big"]["peak_mb"] > 300 > by_id["small"]["peak_mb"] > 1  # each step's own peak, not the run's
    assert by_id["big"]["cpu_seconds"] >= 0.3 and by_id["small"]["cpu_seconds"] >= 0.3
    assert cost_lines(tmp_path)[1].startswith("peak memory: ") and cost_lines(tmp_path)[1].endswith("(big)")


def test_the_wrapper_keeps_exit_codes_and_signals(tmp_path):
    status, manifest = _run([Step("seg", "Seg", argv=[PY, "-c", "import os, signal; os.kill(os.getpid(), 11)"])],
                            tmp_path)
    assert status == "failed" and "segmentation fault" in manifest["steps"][0]["error"]
    status, manifest = _run([Step("three", "Three", argv=[PY, "-c", "raise SystemExit(3)"])], tmp_path / "b")
    assert manifest["steps"][0]["error"] == "exited with code 3"
    status, manifest = _run([Step("gone", "Gone", argv=["/nonexistent/tool"])], tmp_path / "c")
    assert "was not found" in manifest["steps"][0]["error"]


def test_in_process_steps_count_the_children_they_start(tmp_path):
    import subprocess

    def work(ctx):
        subprocess.run([PY, "-c", ALLOC.format(mb=200)], check=True)
    status, manifest = _run([Step("child", "Child", func=work)], tmp_path)
    step = manifest["steps"][0]
    assert status == "ok" and step["peak_children_mb"] > 200 and step["peak_mb"] >= step["peak_children_mb"]
    assert step["cpu_seconds"] >= 0.3


def test_slowest_step_line(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"steps": [
        {"id": "export", "status": "ok", "seconds": 8.0, "cpu_seconds": 9.5, "peak_mb": 2000},
        {"id": "validate", "status": "ok", "seconds": 2.0, "peak_mb": 700},
        {"id": "speed", "status": "not run", "seconds": None}]}))
    assert cost_lines(tmp_path) == ["slowest step: export 8.0 s of 10.0 s (80%, CPU 9.5 s)",
                                    "peak memory: 2000 MB (export)"]
    assert cost_lines(tmp_path / "missing") == []


def test_without_a_usage_record_the_step_still_ends_as_it_did(tmp_path):
    import os
    from core.pipeline.usage import wrap_argv
    import subprocess
    record = tmp_path / "no-such-dir" / "usage.json"  # cannot be written
    ok = subprocess.run(wrap_argv([PY, "-c", "print('hi')"], None, record), capture_output=True, text=True)
    seg = subprocess.run(wrap_argv([PY, "-c", "import os; os.kill(os.getpid(), 11)"], None, record))
    three = subprocess.run(wrap_argv([PY, "-c", "raise SystemExit(3)"], None, record))
    assert (ok.returncode, ok.stdout, seg.returncode, three.returncode) == (0, "hi\n", -11, 3)
    assert not os.path.exists(record)


def test_an_in_process_step_does_not_count_a_background_steps_cpu_or_memory(tmp_path):
    runner_box = []

    def wait_for_bg(ctx):  # ends once the background step (300 MB, 0.3 s of CPU) has finished beside it
        import time
        while "bg" not in runner_box[0].results:
            time.sleep(0.01)

    bg = Step("bg", "Bg", argv=[PY, "-c", ALLOC.format(mb=300)], background=True)
    fg = Step("fg", "Fg", func=wait_for_bg)
    events = []
    runner = Runner(Plan([bg, fg], tmp_path), events.append)
    runner_box.append(runner)
    assert asyncio.run(runner.run()) == "ok"
    by_id = {s["id"]: s for s in json.loads((tmp_path / "manifest.json").read_text())["steps"]}
    assert by_id["bg"]["cpu_seconds"] >= 0.3 and by_id["bg"]["peak_mb"] > 300
    assert by_id["fg"]["cpu_seconds"] < 0.25 and by_id["fg"]["peak_children_mb"] < 300  # (its own RSS: the test process)
