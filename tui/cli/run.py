"""`sherpa-ncnn-wizard run`: the whole pipeline headless, with Rich progress (plain lines without a TTY)."""
from __future__ import annotations

import asyncio
import json
import signal
import stat
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from core.common.formatting import human
from core.pipeline.config import ConfigError, WizardConfig, load_config
from core.pipeline.events import LogLines, RunFinished, StepFinished, StepStarted
from core.pipeline.events import Progress as ProgressEvent
from core.pipeline.layout import PlanError
from core.pipeline.plan import build_plan, describe_plan
from core.pipeline.runner import Runner
from tui.cli.common import stderr_console, stdout_console
from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

STATUS_MARK = {"ok": ("✓", "green"), "skipped": ("↷", "cyan"), "failed": ("✗", "red"), "cancelled": ("■", "yellow")}


def load_run_config(args) -> WizardConfig:
    if args.config:
        config = load_config(args.config)
    else:
        from core.pipeline.demo import demo_config
        config = demo_config(args.demo)
        if not args.out:
            config.output.dir = str(Path("runs") / f"demo-{config.arch}")
    if args.out:
        config.output.dir = args.out
    if args.int8:
        config.output.int8 = True
    if getattr(args, "resample", False):
        config.calibration.resample = True
    if getattr(args, "int8_backend", None):
        config.calibration.backend = args.int8_backend
    if getattr(args, "table_tool", None):
        config.tools.generate_int8_scale_table = args.table_tool
    if getattr(args, "ncnn2int8", None):
        config.tools.ncnn2int8 = args.ncnn2int8
    if args.python:
        config.files.python = args.python
    if args.pnnx:
        config.tools.pnnx = args.pnnx
    if getattr(args, "ignore_checkpoint_mismatch", False):
        config.files.ignore_checkpoint_mismatch = True
    if getattr(args, "trust_checkpoint", False):
        config.files.trust_checkpoint = True
    config.export.extra_args += list(getattr(args, "export_arg", None) or [])
    if getattr(args, "dataset", None):
        config.validation.dataset = str(Path(args.dataset).expanduser().resolve())
    if getattr(args, "max_wer_increase", None) is not None:
        config.validation.max_wer_increase = args.max_wer_increase
    if getattr(args, "min_cosine", None) is not None:
        config.calibration.min_cosine = checked_min_cosine(args.min_cosine)
    if getattr(args, "histogram", None):
        config.calibration.histogram = args.histogram
    return config


def checked_min_cosine(value: float) -> float:
    """--min-cosine as given, or a ConfigError naming the flag."""
    from core.pipeline.config import min_cosine_problem
    problem = min_cosine_problem(value, "--min-cosine")
    if problem:
        raise ConfigError(problem)
    return value


FROM_NCNN_ONLY = ("arch", "reference_dir", "traced_dir", "wav", "calibration_wav")
INT8_ONLY = {"int8_backend": "--int8-backend", "table_tool": "--table-tool", "ncnn2int8": "--ncnn2int8",
             "resample": "--resample", "min_cosine": "--min-cosine", "histogram": "--histogram"}


def inapplicable_flags(args, config: WizardConfig) -> tuple[list[str], list[str]]:
    """(errors, notes): flags that belong to another way of running, and int8 flags when no int8 set is made."""
    errors = [f"--{name.replace('_', '-')} applies to 'run --from-ncnn' only; with --config or --demo the "
              "configuration decides it" for name in FROM_NCNN_ONLY if getattr(args, name, None)]
    notes = []
    if not config.output.int8:
        given = [flag for name, flag in INT8_ONLY.items() if getattr(args, name, None)]
        if given:
            notes.append(f"{', '.join(given)} ignored: no int8 set is made (add --int8, or int8 = true in [output])")
    return errors, notes


def run_pipeline(args) -> int:
    err = stderr_console()
    try:
        config = load_run_config(args)
        errors, notes = inapplicable_flags(args, config)
        if errors:
            for e in errors:
                err.print(Text("error: ", style="bold red") + Text(e))
            return EXIT_BAD_INPUT
        for n in notes:
            err.print(Text("note: ", style="yellow") + Text(n))
        planned = build_plan(config, check_out_dir=not args.dry_run)
        if getattr(args, "package", False):
            from core.pipeline.ship_steps import add_package_step
            add_package_step(planned)
    except ConfigError as exc:
        err.print(Text("error: ", style="bold red") + Text(str(exc)))
        return EXIT_BAD_INPUT
    except PlanError as exc:
        print_plan_problems(err, exc)
        return EXIT_BAD_INPUT
    out = stdout_console()
    for w in planned.warnings:
        out.print(Text("warning: ", style="yellow") + Text(w))
    if args.script:
        _write_script(Path(args.script), planned.script)
        out.print(f"script written to {args.script}")
    if args.dry_run:
        _print_plan(out, planned)
        return EXIT_OK
    planned.out_dir.mkdir(parents=True, exist_ok=True)
    config.save(planned.out_dir / "wizard.toml")
    _write_script(planned.out_dir / "export.sh", planned.script)
    renderer = RichRenderer(out) if out.is_terminal else PlainRenderer(out)
    out.print(Text(f"{planned.resolved.arch.title} -> {planned.out_dir}", style="bold"))
    status = asyncio.run(_run(planned, renderer, args.resume))
    renderer.close()
    from core.pipeline.recent import record_run
    record_run(planned.out_dir, planned.resolved.arch.name, status)
    _print_results(out, planned.out_dir, status)
    return {"ok": EXIT_OK, "cancelled": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _run(planned, renderer, resume: bool) -> str:
    runner = Runner(planned.plan, renderer.handle, resume=resume)
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        renderer.note("cancelling: stopping the running step ...")
        runner.cancel()
    try:
        for sig in HANDLED_SIGNALS:  # SIGHUP: the terminal was closed; the steps run in their own sessions
            loop.add_signal_handler(sig, interrupt)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread or platform
        pass
    try:
        return await runner.run()
    finally:
        for sig in HANDLED_SIGNALS:
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass


def print_plan_problems(err: Console, exc) -> None:
    """Why a plan was refused: one line per problem, each naming its field."""
    err.print(Text("The run cannot start:", style="bold red"))
    for p in exc.problems:
        err.print(Text("  ✗ ", style="red") + Text(p))


def _write_script(path: Path, text: str) -> None:
    from core.common.atomic import atomic_write_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _print_plan(out: Console, planned) -> None:
    out.print(Text(f"Plan for {planned.resolved.arch.title} -> {planned.out_dir} (nothing has been run)", style="bold"))
    for number, title, what in describe_plan(planned):
        out.print(Text(f"{number:>2}. {title}", style="bold"))
        out.print(f"    {what}", highlight=False)


class PlainRenderer:
    """Line output for logs and CI: one line per step event, progress notes as they change."""

    def __init__(self, console: Console):
        self.c = console
        self.total = 0
        self.index = {}
        self.last_note = {}

    def note(self, text: str) -> None:
        self.c.print(text)

    def handle(self, event) -> None:
        if isinstance(event, StepStarted):
            self.total = event.total
            self.index[event.step] = event.index
            beside = " (in the background, beside the next steps)" if event.background else ""
            self.c.print(f"[{event.index}/{event.total}] {event.title} ...{beside}")
        elif isinstance(event, ProgressEvent):
            if event.note and self.last_note.get(event.step) != event.note:
                self.last_note[event.step] = event.note
                frac = f" {event.done:.0f}/{event.total:.0f}" if event.total else ""
                self.c.print(f"      {event.step}:{frac} {event.note}")
        elif isinstance(event, StepFinished):
            self._finished(event)
        elif isinstance(event, RunFinished) and event.error:
            self.c.print(Text(f"error: {event.error}", style="bold red"))

    def _finished(self, e: StepFinished) -> None:
        mark, style = STATUS_MARK.get(e.status, ("?", ""))
        i = self.index.get(e.step, "?")
        self.c.print(Text(f"[{i}/{self.total}] {mark} {e.step} {e.status}", style=style)
                     + Text(f" ({e.seconds:.1f} s)" if e.status != "skipped" else " (unchanged)"))
        if e.status == "failed":
            self.c.print(Text(f"  error: {e.error}", style="bold red"))
            if e.tail:
                self.c.print("  last lines of the log:")
                for line in e.tail:
                    self.c.print(f"    {line}", highlight=False, markup=False)
            if e.hint:
                self.c.print(Text(f"  hint: {e.hint}", style="yellow"))

    def close(self) -> None:
        pass


class RichRenderer(PlainRenderer):
    """A live progress bar per running step (a background step's beside the current one), finished steps printed
    above them."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                                 transient=True)
        self.progress.start()
        self.tasks: dict[str, object] = {}  # step id -> its progress task

    def handle(self, event) -> None:
        if isinstance(event, StepStarted):
            self.total = event.total
            self.index[event.step] = event.index
            self._drop(event.step)
            beside = " (background)" if event.background else ""
            self.tasks[event.step] = self.progress.add_task(f"[{event.index}/{event.total}] {event.title}{beside}",
                                                            total=None, note="")
        elif isinstance(event, ProgressEvent) and event.step in self.tasks:
            self.progress.update(self.tasks[event.step], completed=event.done or 0, total=event.total,
                                 note=event.note)
        elif isinstance(event, LogLines):
            pass
        elif isinstance(event, StepFinished):
            self._drop(event.step)
            self._finished(event)
        elif isinstance(event, RunFinished):
            self.progress.stop()
            if event.error:
                self.c.print(Text(f"error: {event.error}", style="bold red"))

    def _drop(self, step: str) -> None:
        task = self.tasks.pop(step, None)
        if task is not None:
            self.progress.remove_task(task)

    def close(self) -> None:
        self.progress.stop()


def _print_results(out: Console, out_dir: Path, status: str) -> None:
    summary_file = out_dir / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        table = Table(title="sizes", show_edge=False)
        for col in ("model", "pt", "fp16", "fp32", "int8"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in summary["sizes"]:
            table.add_row(r["model"], human(r["pt"]), human(r["fp16"]), human(r.get("fp32")), human(r["int8"]))
        out.print(table)
        from tui.cli.ship import print_ship_results
        print_ship_results(out, summary)
    layers_file = out_dir / "int8-layers.json"
    if layers_file.exists():
        from core.int8.report import report_sensitivity_lines
        try:
            lines = report_sensitivity_lines(json.loads(layers_file.read_text()))
        except (OSError, ValueError, AttributeError, TypeError):
            lines = [f"{layers_file}: unreadable; the per-layer sensitivity is not shown"]
        for line in lines:
            out.print(line, highlight=False, markup=False)
    from core.validation.report import read_validation, summary_lines
    validation = read_validation(out_dir)
    marks = {"ok": ("[✓] ", "green"), "failed": ("[✗] ", "red"), "warning": ("[!] ", "yellow")}
    for line in summary_lines(validation, per_wav=True):
        mark, style = marks[line.status]
        out.print(Text(mark, style=style) + Text(line.text))
    for note in validation.notes:
        out.print(Text("note: ", style="yellow") + Text(note))
    from core.pipeline.usage import cost_lines
    for line in cost_lines(out_dir):  # slowest step, peak memory (manifest.json)
        out.print(line, highlight=False, markup=False)
    verdict = {"ok": ("done", "bold green"), "cancelled": ("cancelled: finished steps are kept; resume with --resume",
                                                           "bold yellow")}.get(status, ("failed: fix the problem, then "
                                                                                        "run again with --resume",
                                                                                        "bold red"))
    out.print(Text(f"{verdict[0]}  ({out_dir})", style=verdict[1]))
    if status == "ok":
        from tui.cli.common import next_steps
        for line in next_steps(out_dir):
            out.print(Text(line, style="bold" if line == "next steps:" else ""))
