"""The Textual wizard: the App, the run model and the pipeline worker.

Threading decision: the pipeline runs as an *async* worker owned by the App
(``group="pipeline"``), so it survives screens being pushed and popped. The
Runner awaits its subprocesses on the App's event loop, and in-process steps
report back through ``loop.call_soon_threadsafe``, so every ``on_event`` call
already arrives on the UI thread: no ``call_from_thread`` is needed. Log lines
are not written to a widget per event: ``RunModel`` buffers them and the run
screen flushes the buffer on a timer (every 80 ms) with one ``write_lines``.
"""
from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.worker import Worker, WorkerState

from core.pipeline.config import WizardConfig, load_config
from core.pipeline.events import LogLines, Progress, RunFinished, StepFinished, StepStarted
from core.pipeline.layout import PlanError
from core.pipeline.plan import PlannedRun, build_plan

LOG_KEEP_LINES = 5000  # per step, in memory; the full log is in OUT/logs


@dataclass
class StepState:
    id: str
    title: str
    index: int
    command: str | None = None
    status: str = "pending"  # pending, running, ok, failed, cancelled, skipped
    started: float | None = None
    seconds: float | None = None
    error: str | None = None
    hint: str | None = None
    tail: tuple[str, ...] = ()
    lines: deque = field(default_factory=lambda: deque(maxlen=LOG_KEEP_LINES))
    done: float | None = None
    total: float | None = None
    note: str = ""
    background: bool = False  # runs beside the steps after it

    def elapsed(self) -> float | None:
        if self.status == "running" and self.started is not None:
            return time.monotonic() - self.started
        return self.seconds


class RunModel:
    """Everything the run screen shows, updated from core events (on the UI thread)."""

    def __init__(self, planned: PlannedRun):
        self.out_dir = planned.out_dir
        self.steps = [StepState(s.id, s.title, i, s.command) for i, s in enumerate(planned.plan.steps, start=1)]
        self.by_id = {s.id: s for s in self.steps}
        self.status = "running"
        self.seconds: float | None = None
        self.pending: dict[str, list[str]] = {}  # step -> lines not yet shown in a widget
        self.version = 0  # bumped on every change the step list shows

    @property
    def running(self) -> StepState | None:
        """The step the run is at: the latest started (a background step may still run beside it)."""
        return next((s for s in reversed(self.steps) if s.status == "running"), None)

    @property
    def failed(self) -> StepState | None:
        return next((s for s in self.steps if s.status in ("failed", "cancelled")), None)

    def log_path(self, step: StepState) -> Path:
        return self.out_dir / "logs" / f"{step.index:02d}-{step.id}.log"

    def handle(self, event) -> None:
        if isinstance(event, LogLines):
            s = self.by_id.get(event.step)
            if s is not None:
                s.lines.extend(event.lines)
                self.pending.setdefault(event.step, []).extend(event.lines)
            return
        if isinstance(event, StepStarted):
            s = self.by_id[event.step]
            s.status, s.started, s.command = "running", time.monotonic(), event.command or s.command
            s.background = event.background
            s.done = s.total = None
            s.note = ""
        elif isinstance(event, Progress):
            s = self.by_id.get(event.step)
            if s is not None:
                s.done, s.total, s.note = event.done, event.total, event.note or s.note
        elif isinstance(event, StepFinished):
            s = self.by_id[event.step]
            s.status, s.seconds = event.status, event.seconds
            s.error, s.hint, s.tail = event.error, event.hint, event.tail
        elif isinstance(event, RunFinished):
            self.status, self.seconds = event.status, event.seconds
            for s in self.steps:
                if s.status == "running":
                    s.status = "cancelled"
        self.version += 1

    def take_pending(self, step: str) -> list[str]:
        lines = self.pending.pop(step, [])
        self.pending.clear()  # lines of other steps are in their StepState.lines already
        return lines


class WizardApp(App):
    """sherpa-ncnn-wizard: guided export of an icefall streaming transducer to sherpa-ncnn."""

    CSS_PATH = "wizard.tcss"
    TITLE = "sherpa-ncnn-wizard"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, *, config: WizardConfig | None = None, demo: str | None = None,
                 out_dir: str | None = None, show_timings: bool = True):
        super().__init__()
        self.config = config or WizardConfig()
        self.detected = None  # what "Detect from checkpoint" found (wizard_logic.DetectedModel)
        self.start_demo = demo
        self.start_config = config is not None
        self.out_override = out_dir
        self.show_timings = show_timings  # snapshot tests turn elapsed times off
        self.planned: PlannedRun | None = None
        self.run_model: RunModel | None = None
        self.runner = None
        self.run_worker_: Worker | None = None
        self.resume_next = False
        self._quit_after_run = False

    # -- start-up ---------------------------------------------------------------
    def on_mount(self) -> None:
        from tui.wizard.screens import StartScreen
        self._watch_hangup()
        self.push_screen(StartScreen())
        if self.start_demo:
            self.use_demo(self.start_demo)
        elif self.start_config:
            self.open_config_at_review()

    def use_demo(self, arch: str) -> None:
        from core.pipeline.demo import demo_config
        from tui.wizard.screens import FilesScreen
        self.config = demo_config(arch)
        self.config.output.dir = self.out_override or str(Path("runs") / f"demo-{self.config.arch}")
        self.push_screen(FilesScreen())

    def use_own_model(self) -> None:
        from tui.wizard.screens import FilesScreen
        self.config = WizardConfig()
        if self.out_override:
            self.config.output.dir = self.out_override
        self.push_screen(FilesScreen())

    def use_existing_ncnn(self) -> None:
        from tui.wizard.ncnn import NcnnDirScreen
        self.config = WizardConfig()
        self.config.output.dir = self.out_override or str(Path("runs") / "from-ncnn")
        self.push_screen(NcnnDirScreen())

    def open_config(self, path: str) -> str | None:
        """Load a wizard.toml and go to Review; returns an error message instead."""
        from core.pipeline.config import ConfigError
        try:
            self.config = load_config(path)
        except ConfigError as exc:
            return str(exc)
        if self.out_override:
            self.config.output.dir = self.out_override
        self.open_config_at_review()
        return None

    def open_config_at_review(self) -> None:
        from tui.wizard.review import QuantScreen, ReviewScreen
        from tui.wizard.screens import ArchScreen, FilesScreen, HyperScreen
        if self.config.files.from_ncnn:
            from tui.wizard.ncnn import NcnnDirScreen
            files: object = NcnnDirScreen()
        else:
            files = FilesScreen()
        for screen in (files, ArchScreen(), HyperScreen(), QuantScreen(), ReviewScreen()):
            self.push_screen(screen)

    # -- the run ----------------------------------------------------------------
    @property
    def run_in_progress(self) -> bool:
        return self.run_worker_ is not None and self.run_worker_.state in (WorkerState.PENDING,
                                                                           WorkerState.RUNNING)

    def plan(self) -> PlannedRun:
        """build_plan for a copy of the current config (raises PlanError).

        It can take seconds (it reads the checkpoint, which imports torch): call it from a thread worker
        (ReviewScreen.plan_in_thread, App.replan_and_resume), never on the UI thread of a running app.
        """
        return build_plan(copy.deepcopy(self.config))

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def replan_and_resume(self) -> None:
        """Resume from the run screen: plan again in a thread, then start on the UI thread."""
        try:
            planned = self.plan()
        except PlanError as exc:
            self.call_from_thread(self.notify, "the run cannot start:\n" + "\n".join(exc.problems),
                                  severity="error", timeout=15)
            return
        self.call_from_thread(self.start_run, planned, True)

    def start_run(self, planned: PlannedRun, resume: bool = False) -> str | None:
        """Write wizard.toml and export.sh into OUT, start the pipeline worker, show the run screen."""
        from core.pipeline.runner import Runner
        from tui.cli.run import _write_script
        from tui.wizard.run import RunScreen
        if self.run_in_progress:
            return "a run is already going"
        self.planned = planned
        planned.out_dir.mkdir(parents=True, exist_ok=True)
        planned.config.save(planned.out_dir / "wizard.toml")
        _write_script(planned.out_dir / "export.sh", planned.script)
        self.run_model = RunModel(planned)
        self.runner = Runner(planned.plan, self.on_core_event, resume=resume)
        self.resume_next = False
        if not isinstance(self.screen, RunScreen):
            self.push_screen(RunScreen())
        else:
            self.screen.reset()
        self.run_worker_ = self.run_worker(self.runner.run(), name="pipeline", group="pipeline",
                                           exclusive=True, exit_on_error=False,
                                           description=f"run {planned.out_dir}")
        self.refresh_bindings()  # "n New run" leaves the footer while the run goes
        return None

    def on_core_event(self, event) -> None:
        """Runner.on_event: called on the App's loop (see the module docstring)."""
        from core.pipeline.events import RunFinished
        if isinstance(event, RunFinished) and self.planned is not None:
            from core.pipeline.recent import record_run
            record_run(self.planned.out_dir, self.planned.resolved.arch.name, event.status)
        if self.run_model is not None:
            self.run_model.handle(event)
        if isinstance(event, RunFinished):
            from tui.wizard.run import RunScreen
            self.refresh_bindings()  # "n New run" is back in the footer
            if event.error:
                self.notify(event.error, title="run not started", severity="error", timeout=15)
            for screen in self.screen_stack:
                if isinstance(screen, RunScreen):
                    screen.run_finished()
            if self._quit_after_run:
                self.exit()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self.run_worker_ and event.state == WorkerState.ERROR:
            self.notify(f"the run stopped with an internal error: {event.worker.error}", severity="error",
                        timeout=10)
            if self.run_model is not None and self.run_model.status == "running":
                self.run_model.status = "failed"
                self.run_model.version += 1

    def _watch_hangup(self) -> None:
        """Closing the terminal (SIGHUP) cancels a running step and quits, like ctrl+q answered yes: the steps run
        in sessions of their own, so nothing else would stop them."""
        import asyncio
        import signal
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hang_up)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not the main thread
            pass

    def hang_up(self) -> None:
        self._quit_after_run = True
        if self.run_in_progress:
            self.cancel_run()
        else:
            self.exit()

    def cancel_run(self) -> None:
        if self.runner is not None and self.run_in_progress:
            self.runner.cancel()

    async def action_quit(self) -> None:
        if not self.run_in_progress:
            self.exit()
            return
        from tui.wizard.base import ConfirmScreen

        def answer(yes: bool | None) -> None:
            if yes:
                self._quit_after_run = True
                self.cancel_run()
        self.push_screen(ConfirmScreen("A step is running. Cancel the run and quit?"), answer)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While a run goes, "n New run" leaves the footer (it could only say "cancel it first")."""
        if action == "new_run" and self.run_in_progress:
            return None
        return True

    def action_new_run(self) -> None:
        """Start over on the first screen (a finished, failed or cancelled run stays on disk)."""
        from tui.wizard.screens import StartScreen
        if self.run_in_progress:
            self.notify("a run is going: cancel it first (c)", severity="warning")
            return
        self.resume_next = False
        self.detected = None
        while len(self.screen_stack) > 2:
            self.pop_screen()
        if not isinstance(self.screen, StartScreen):
            self.switch_screen(StartScreen())

    # -- command palette --------------------------------------------------------
    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for binding in screen.active_bindings.values():
            b = binding.binding
            if b.show and b.description and b.action not in ("quit", "command_palette", "app.new_run"):
                yield SystemCommand(b.description, f"{b.description} ({b.key_display or b.key})",
                                    lambda a=b.action, s=screen: s.run_action(a))
        yield SystemCommand("New run", "start over on the first screen (n after a run)", self.action_new_run)
        yield SystemCommand("Use the bundled demo (streaming Zipformer)", "start over on the demo",
                            lambda: self.use_demo("zipformer"))


def make_app(config_path: str | None = None, demo: str | None = None, out_dir: str | None = None,
             show_timings: bool = True) -> WizardApp:
    config = load_config(config_path) if config_path else None
    if config is not None and out_dir:
        config.output.dir = out_dir
    return WizardApp(config=config, demo=demo, out_dir=out_dir, show_timings=show_timings)


def run_tui(args) -> int:
    from core.pipeline.config import ConfigError
    try:
        app = make_app(getattr(args, "config", None), getattr(args, "demo", None), getattr(args, "out", None))
    except ConfigError as exc:
        import sys
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.run()
    return 0 if app.return_code in (None, 0) else app.return_code
