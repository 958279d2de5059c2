"""Snapshots of every wizard screen at 100x32 (pytest-textual-snapshot).

No timings get in: the app runs with show_timings=False, the run screen is fed
a fixed sequence of core events (no real run), and the summary reads a
crafted output directory. Every path on screen is fixed, whatever the checkout's
location: the demo assets, the Python and the pnnx binary are reached through
symlinks under /tmp/sherpa-ncnn-wizard-snapshot-paths, and the output goes to
/tmp/sherpa-ncnn-wizard-snapshot. Update with ``--snapshot-update`` only after
looking at the result.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.pipeline.demo import DEMO_ROOT, demo_config
from core.pipeline.events import LogLines, Progress, RunFinished, StepFinished, StepStarted
from tui.wizard.app import RunModel, WizardApp
from tui.wizard.run import RunScreen, SummaryScreen

# one worker for the whole module: the fixed paths under /tmp are shared (./dev.sh runs --dist loadgroup)
pytestmark = pytest.mark.xdist_group("tui-snapshots")

SIZE = (100, 32)
OUT = Path("/tmp/sherpa-ncnn-wizard-snapshot")

FIXED = Path("/tmp/sherpa-ncnn-wizard-snapshot-paths")


@pytest.fixture(autouse=True)
def fixed_paths(monkeypatch):
    """Same paths on every machine: symlinks at a fixed place stand in for this checkout's files."""
    import sys

    import core.pipeline.demo
    import core.pnnx.tools
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.rmtree(FIXED, ignore_errors=True)
    FIXED.mkdir(parents=True)
    pnnx, version = core.pnnx.tools.wheel_pnnx()
    (FIXED / "demo").symlink_to(DEMO_ROOT)
    (FIXED / "python").symlink_to(sys.executable)
    (FIXED / "pnnx").symlink_to(pnnx)
    monkeypatch.setattr(core.pipeline.demo, "DEMO_ROOT", FIXED / "demo")
    monkeypatch.setattr(core.pipeline.demo, "ICEFALL_ROOT", FIXED / "demo" / "icefall")
    monkeypatch.setattr(core.pipeline.demo, "TEST_WAVS", FIXED / "demo" / "test_wavs")
    monkeypatch.setattr(core.pipeline.demo, "CALIBRATION_WAVS", FIXED / "demo" / "calibration_wavs", raising=False)
    monkeypatch.setattr(sys, "executable", str(FIXED / "python"))
    monkeypatch.setattr(core.pnnx.tools, "wheel_pnnx", lambda: (FIXED / "pnnx", version))
    monkeypatch.setattr(core.pnnx.tools, "pnnx_on_path", lambda: [])
    import core.pnnx.convert
    (FIXED / "pnnx-fallback").symlink_to(core.pnnx.convert.fallback_pnnx())  # dangling when not installed
    monkeypatch.setattr(core.pnnx.convert, "fallback_pnnx", lambda: FIXED / "pnnx-fallback")
    yield
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.rmtree(FIXED, ignore_errors=True)


def demo_app(arch: str = "zipformer") -> WizardApp:
    return WizardApp(demo=arch, out_dir=str(OUT / "out"), show_timings=False)


def config_app(arch: str = "zipformer") -> WizardApp:
    config = demo_config(arch)
    config.output.dir = str(OUT / "out")
    return WizardApp(config=config, show_timings=False)


async def no_blink(pilot) -> None:
    from textual.widgets import Input
    for screen in pilot.app.screen_stack:
        for widget in screen.query(Input):
            widget.cursor_blink = False
    await pilot.pause()


def test_start_screen(snap_compare):
    assert snap_compare(WizardApp(show_timings=False), terminal_size=SIZE)


async def files_checked(pilot) -> None:
    """The Files screen checks the checkpoint and tokens in a worker: wait for its verdicts."""
    import time
    deadline = time.monotonic() + 60
    while pilot.app.screen.pending() and time.monotonic() < deadline:
        await pilot.pause(0.05)
    await no_blink(pilot)


def test_files_screen(snap_compare):
    assert snap_compare(demo_app(), terminal_size=SIZE, run_before=files_checked)


def test_arch_screen(snap_compare):
    assert snap_compare(demo_app("conv-emformer"), terminal_size=SIZE, press=["enter"], run_before=no_blink)


def test_hyperparameter_screen_with_an_invalid_field(snap_compare):
    async def before(pilot):
        await pilot.press("enter", "enter")
        await pilot.pause()
        pilot.app.screen.query_one("#hp-decode_chunk_len").value = "33"
        pilot.app.screen.query_one("#hp-decode_chunk_len").focus()
        await no_blink(pilot)
    assert snap_compare(demo_app(), terminal_size=SIZE, run_before=before)


def test_quantization_screen(snap_compare):
    assert snap_compare(demo_app("lstm"), terminal_size=SIZE, press=["enter", "enter", "enter"],
                        run_before=no_blink)


async def review_ready(pilot) -> None:
    import time
    deadline = time.monotonic() + 60
    while getattr(pilot.app.screen, "plan_state", "pending") == "pending" and time.monotonic() < deadline:
        await pilot.pause(0.05)
    await no_blink(pilot)


def test_review_screen(snap_compare):
    assert snap_compare(config_app("lstm"), terminal_size=SIZE, run_before=review_ready)


def feed(app: WizardApp, fail: bool) -> None:
    """A finished (or failed) run, as events, without running anything."""
    planned = app.plan()
    app.run_model = model = RunModel(planned)
    total = len(model.steps)
    for s in model.steps:
        model.handle(StepStarted(s.id, s.index, total, s.title, s.command))
        model.handle(LogLines(s.id, tuple(f"{s.id}: line {i}" for i in range(40))))
        model.handle(Progress(s.id, 3, 3, "done"))
        if fail and s.id == "export":
            model.handle(StepFinished(s.id, "failed", 1.0, error="exited with code 1",
                                      hint="the export needs icefall's Python environment: set python = ...",
                                      tail=("Traceback (most recent call last):",
                                            "ModuleNotFoundError: No module named 'k2'")))
            model.handle(RunFinished("failed", 2.0, str(planned.out_dir)))
            return
        model.handle(StepFinished(s.id, "ok", 1.0))
    model.handle(RunFinished("ok", 9.0, str(planned.out_dir)))


@pytest.mark.parametrize("size", [SIZE, (80, 24)], ids=["100x32", "80x24"])
@pytest.mark.parametrize("fail", [False, True], ids=["finished", "failed"])
def test_run_screen(snap_compare, fail, size):
    """At 80x24 too: the failure's hint and "x: fix and resume" come first, the full log's path is readable."""
    async def before(pilot):
        app = pilot.app
        feed(app, fail)
        await app.push_screen(RunScreen())
        await pilot.pause(0.3)
        app.screen.run_finished()
        await pilot.pause()
    assert snap_compare(config_app("lstm"), terminal_size=size, run_before=before)


def test_small_terminal_files_screen(snap_compare):
    assert snap_compare(demo_app(), terminal_size=(80, 24), run_before=files_checked)


def crafted_out_dir() -> Path:
    out = OUT / "done"
    out.mkdir(parents=True)
    for net in ("encoder", "decoder", "joiner"):
        for ext in ("param", "bin"):
            (out / f"{net}_jit_trace-pnnx.ncnn.{ext}").write_text("x")
    files = sorted(p.name for p in out.iterdir()) + ["tokens.txt"]
    sizes = [{"model": "checkpoint", "pt": 207733, "fp16": None, "int8": None},
             {"model": "encoder", "pt": 219494, "fp16": 84588, "int8": None},
             {"model": "decoder", "pt": 15526, "fp16": 4232, "int8": None},
             {"model": "joiner", "pt": 26008, "fp16": 8716, "int8": None}]
    (out / "summary.json").write_text(json.dumps({"sizes": sizes, "files": files}))
    numeric = [{"net": n, "output": "out0", "max_abs": 1.6e-3, "tolerance": 1e-2, "ok": True, "note": ""}
               for n in ("encoder", "decoder", "joiner")]
    decode = {"ok": True, "model": "fp16", "results": [{"wav": "/x/0-chirp.wav", "text": "ONEGGI"},
                                                       {"wav": "/x/1-tones.wav", "text": "GGI"}]}
    (out / "validation.json").write_text(json.dumps({"numeric": numeric, "decode": decode, "ok": True}))
    return out


def test_summary_screen(snap_compare):
    async def before(pilot):
        await pilot.app.push_screen(SummaryScreen(crafted_out_dir()))
        await pilot.pause()
    assert snap_compare(WizardApp(show_timings=False), terminal_size=SIZE, run_before=before)


def test_small_terminal_review(snap_compare):
    assert snap_compare(config_app("zipformer"), terminal_size=(80, 24), run_before=review_ready)
