"""The run screen (step list, log pane, progress, cancel/resume) and the summary screen.

The run screen only *shows* ``app.run_model``: the App's worker feeds the model
from core events; a timer here (every 80 ms) redraws the step list when it
changed and writes the buffered log lines of the shown step with one
``Log.write_lines`` call. The Log widget keeps ``LOG_WIDGET_LINES``; the full
log of every step is in OUT/logs.
"""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Label, Log, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from core.common.problems import ProblemKind, kind_of
from tui.wizard import checks, logic
from tui.wizard.base import ConfirmScreen, StepBar

CHECK_MARKS = {"ok": ("✓ ", "green"), "warning": ("! ", "bold yellow"), "failed": ("✗ ", "bold red")}
FLUSH_SECONDS = 0.08
LOG_WIDGET_LINES = 2000
ICONS = {"pending": ("·", "dim"), "running": ("▶", "bold yellow"), "ok": ("✓", "green"),
         "skipped": ("↷", "cyan"), "failed": ("✗", "bold red"), "cancelled": ("■", "yellow")}


class StepList(OptionList):
    """The steps of the plan: status icon, title, elapsed time."""


class StepLog(Log):
    """The log of the selected step (bounded; the full log is on disk)."""


class RunProgress(Static):
    """Stage name (and numbers) of the running step, above its progress bar."""


class FailurePanel(Static):
    """On failure: the error, the last log lines and the hint."""


class RunScreen(Screen):
    AUTO_FOCUS = "#steps"
    BINDINGS = [
        Binding("c", "cancel", "Cancel", tooltip="cancel the running step (asks first)"),
        Binding("r", "resume", "Resume", tooltip="run again, skipping the steps whose files are unchanged"),
        Binding("x", "fix", "Fix", tooltip="fix and resume: back to the step that needs fixing"),
        Binding("l", "log_path", "Log path", tooltip="the full log of the shown step"),
        Binding("a", "follow", "Follow", tooltip="show the running step's log again"),
        Binding("s", "summary", "Summary"),
        Binding("n", "app.new_run", "New run", tooltip="start over on the first screen (when nothing runs)"),
    ]

    def compose(self) -> ComposeResult:
        yield StepBar("Run")
        with Horizontal(id="run-main"):
            with Vertical(id="run-left"):
                yield StepList(id="steps")
                yield Static("", id="run-status")
            with Vertical(id="run-right"):
                yield RunProgress("", id="progress-label")
                yield ProgressBar(total=None, show_eta=False, id="progress")
                yield StepLog(max_lines=LOG_WIDGET_LINES, id="log", auto_scroll=True)
                yield Static("", id="log-path", classes="muted")
        yield FailurePanel("", id="failure")
        with Horizontal(classes="nav"):
            yield Button("Cancel", id="cancel", variant="error")
            yield Button("Resume", id="resume")
            yield Button("Fix and resume", id="fix")
            yield Static(classes="nav-gap")
            yield Button("Summary", id="summary", variant="primary", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.follow = True
        self.shown_step: str | None = None
        self.drawn_version = -1
        self.query_one("#failure", FailurePanel).display = False
        self.set_interval(FLUSH_SECONDS, self.flush)
        self.flush()

    def reset(self) -> None:
        """A new run (resume) into the same screen."""
        self.follow = True
        self.shown_step = None
        self.drawn_version = -1
        self.query_one("#steps", StepList).clear_options()
        self.query_one("#failure", FailurePanel).display = False
        self.flush()

    @property
    def model(self):
        return self.app.run_model

    # -- drawing ---------------------------------------------------------------
    def step_prompt(self, s) -> Text:
        icon, style = ICONS.get(s.status, ("?", ""))
        if s.status == "running" and s.background:
            icon = "▷"  # running beside the step the run is at
        t = Text(f"{icon} ", style=style, no_wrap=True, overflow="ellipsis")  # one line each, even at 80x24
        name = s.id if len(s.id) <= 14 else s.id[:13] + "…"
        t.append(f"{s.index:>2} {name:<14}")
        elapsed = s.elapsed()
        if self.app.show_timings and elapsed is not None and s.status != "skipped":
            t.append(f"{elapsed:5.1f}s")  # the option's own colours: readable highlighted or not
        elif s.status == "skipped":
            t.append(" same", style="dim")  # (kept from the last run: "unchanged" wrapped at 80x24)
        return t

    def flush(self) -> None:
        model = self.model
        if model is None:
            return
        steps = self.query_one("#steps", StepList)
        running = model.running
        if steps.option_count != len(model.steps):
            steps.clear_options()
            steps.add_options([Option(self.step_prompt(s), id=s.id) for s in model.steps])
        elif model.version != self.drawn_version or running is not None:
            for i, s in enumerate(model.steps):
                if s.status == "running" or model.version != self.drawn_version:
                    steps.replace_option_prompt_at_index(i, self.step_prompt(s))
        # which step the log pane shows: the running one while following
        target = self.shown_step
        if self.follow:
            focus = running or model.failed or (model.steps[-1] if model.status == "ok" else None)
            if focus is None:
                focus = next((s for s in reversed(model.steps) if s.status != "pending"), model.steps[0])
            target = focus.id
        if target != self.shown_step:
            self.show_step(target)
        else:
            lines = model.take_pending(target) if target else []
            if lines:  # only what the widget keeps: older lines would be pruned at once (all are on disk)
                self.query_one("#log", StepLog).write_lines(lines[-LOG_WIDGET_LINES:])
        if self.follow and target is not None:
            index = model.by_id[target].index - 1
            if steps.highlighted != index:
                self._programmatic = True
                steps.highlighted = index
        if model.version != self.drawn_version or running is not None:
            self.draw_progress(running)
            self.draw_status()
        self.drawn_version = model.version

    def show_step(self, step_id: str | None) -> None:
        self.shown_step = step_id
        log = self.query_one("#log", StepLog)
        log.clear()
        if step_id is None:
            return
        s = self.model.by_id[step_id]
        self.model.pending.pop(step_id, None)
        log.write_lines(list(s.lines)[-LOG_WIDGET_LINES:])
        self.query_one("#log-path", Static).update(Text(f"full log: {logic.short_path(self.model.log_path(s))}"))

    def draw_progress(self, running) -> None:
        bar = self.query_one("#progress", ProgressBar)
        label = self.query_one("#progress-label", RunProgress)
        model = self.model
        if running is None:
            if model.status == "running":
                label.update("starting ...")
                return
            done = sum(1 for s in model.steps if s.status in ("ok", "skipped"))
            bar.update(total=len(model.steps), progress=done)
            label.update(Text(f"run {model.status}: {done}/{len(model.steps)} steps done"))
            return
        if running.total:
            bar.update(total=running.total, progress=running.done or 0)
            what = f"{running.done:.0f}/{running.total:.0f}"
        else:
            bar.update(total=None)
            what = ""
        # one line, cut with "…" (wizard.tcss: the note can be a long path; the log has it in full)
        label.update(Text(f"{running.index}. {running.title}: {running.note or 'running'} {what}".rstrip()))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """The footer shows only the keys that do something now (it is cut at 80 columns otherwise)."""
        model = self.model
        if model is None:
            return True
        running = model.status == "running"
        when = {"cancel": running, "resume": not running and model.status != "ok",
                "fix": not running and model.failed is not None, "summary": model.status == "ok",
                "app.new_run": not running, "new_run": not running}
        return when.get(action, True)

    def draw_status(self) -> None:
        model = self.model
        if getattr(self, "_bindings_for", None) != model.status:
            self._bindings_for = model.status
            self.refresh_bindings()
        status = self.query_one("#run-status", Static)
        running = model.status == "running"
        self.query_one("#cancel", Button).disabled = not running
        self.query_one("#resume", Button).disabled = running or model.status == "ok"
        self.query_one("#fix", Button).disabled = running or model.failed is None
        summary = self.query_one("#summary", Button)
        summary.disabled = model.status != "ok"
        verdict = {"running": ("running ...", "yellow"), "ok": ("✓ all steps done", "bold green"),
                   "failed": ("✗ the run failed", "bold red"),
                   "cancelled": ("■ cancelled: finished steps are kept", "bold yellow")}
        text, style = verdict.get(model.status, (model.status, ""))
        status.update(Text(text, style=style))
        failure = self.query_one("#failure", FailurePanel)
        failed = model.failed if model.status != "running" else None
        if failed is not None and failed.status == "failed":
            # what to do first (the panel is at most 10 lines): error, hint, the key; the log's tail after
            t = Text(f"✗ {failed.id}: {failed.error}\n", style="bold red")
            if failed.hint:  # with the wizard's way out when the hint's kind has one (a field, not a flag)
                t.append(f"hint: {checks.in_wizard_words(failed.hint)}\n", style="yellow")
            t.append(f"x: fix and resume → {logic.fix_target(failed.id, failed.hint, failed.error)}", style="bold")
            t.append(f"   full log: {logic.short_path(model.log_path(failed))}\n")
            for line in failed.tail[-6:]:
                t.append(f"  {line}\n", style="italic")
            failure.update(t)
            failure.display = True
        elif failed is not None:
            failure.update(Text(f"■ {failed.id} cancelled; r resumes from it", style="yellow"))
            failure.display = True
        else:
            failure.display = False

    def run_finished(self) -> None:
        self.flush()
        if self.model is not None and self.model.status == "ok":
            self.query_one("#summary", Button).focus()

    # -- selection -------------------------------------------------------------
    @on(OptionList.OptionHighlighted, "#steps")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if getattr(self, "_programmatic", False):
            self._programmatic = False
            return
        step_id = event.option.id
        running = self.model.running if self.model else None
        self.follow = running is not None and step_id == running.id
        if step_id != self.shown_step:
            self.show_step(step_id)

    # -- actions ---------------------------------------------------------------
    def action_follow(self) -> None:
        self.follow = True
        self.flush()

    def action_cancel(self) -> None:
        if not self.app.run_in_progress:
            self.notify("nothing is running")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.app.cancel_run()
        self.app.push_screen(ConfirmScreen("Cancel the running step (and the rest of the run)?"), answer)

    def action_resume(self) -> None:
        if self.app.run_in_progress or (self.model and self.model.status == "ok"):
            return
        self.notify("checking the files again, then resuming ...")
        self.app.replan_and_resume()

    def action_fix(self) -> None:
        from tui.wizard.screens import FilesScreen, HyperScreen
        model = self.model
        if self.app.run_in_progress or model is None or model.failed is None:
            return
        failed = model.failed
        target = HyperScreen if logic.fix_target(failed.id, failed.hint, failed.error) == "hyperparameters" \
            else FilesScreen
        self.app.resume_next = True
        stack = self.app.screen_stack
        if not any(isinstance(s, target) for s in stack):
            self.app.push_screen(target())
        else:
            while not isinstance(self.app.screen, target):
                self.app.pop_screen()
            self.app.screen.refresh_state()  # checks again: the file may have been fixed on disk meanwhile
        if target is FilesScreen and kind_of(failed.hint) is ProblemKind.PYTHON_ENV:
            screen = self.app.screen  # the field the hint is about (once the screen is there)
            screen.call_after_refresh(lambda: [field.focus() for field in screen.query("#f-python")])

    def action_log_path(self) -> None:
        if self.model is None or self.shown_step is None:
            return
        self.notify(str(self.model.log_path(self.model.by_id[self.shown_step])), title="full log", timeout=10)

    def action_summary(self) -> None:
        if self.model is not None and self.model.status == "ok":
            self.app.push_screen(SummaryScreen(self.model.out_dir))

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        action = {"cancel": self.action_cancel, "resume": self.action_resume, "fix": self.action_fix,
                  "summary": self.action_summary}.get(event.button.id or "")
        if action:
            action()


class SizeTable(DataTable):
    """pt / fp16 / fp32 / int8 sizes per model (OUT/summary.json)."""


class SummaryScreen(Screen):
    BINDINGS = [Binding("escape", "back", "Back to the run"), Binding("n", "app.new_run", "New run"),
                Binding("q", "app.quit", "Quit")]

    def __init__(self, out_dir):
        super().__init__()
        self.out_dir = out_dir

    def compose(self) -> ComposeResult:
        results = logic.read_results(self.out_dir)
        yield StepBar("Summary")
        with VerticalScroll(classes="body"):
            yield Static(Text(f"✓ the sherpa-ncnn model is in {self.out_dir}", style="bold green"))
            yield Label("Sizes", classes="section")
            yield SizeTable(id="sizes", show_cursor=False)
            charts = logic.summary_charts(self.out_dir)
            if charts["sizes"]:
                yield Static(Text("\n".join(charts["sizes"])), id="size-bars", classes="code")
            from core.pipeline.usage import cost_lines
            costs = cost_lines(self.out_dir)  # slowest step and peak memory (manifest.json)
            if costs:
                yield Static(Text("\n".join(costs)), id="costs")
            shipped = logic.shipped_text(self.out_dir)  # speed, dataset WER, int8 by layer type
            if shipped:
                yield Label("Speed and int8 (sherpa-ncnn)", classes="section")
                yield Static(Text(shipped), id="shipped", classes="code")
            if charts["kinds"]:
                yield Label("What int8 did, by layer type", classes="section")
                yield Static(Text("\n".join(charts["kinds"])), id="kind-bars", classes="code")
            if charts["sensitivity"]:
                yield Label("Which layers int8 hurts most", classes="section")
                yield Static(Text("\n".join(charts["sensitivity"])), id="sensitivity-bars", classes="code")
            if charts["histograms"]:  # each most-clipped layer's activations, ▲ under its int8 threshold
                yield Label("Where int8 clips", classes="section")
                yield Static(Text("\n".join(charts["histograms"])), id="clip-histograms", classes="code")
            yield Label("Validation", classes="section")
            shown = Text()
            for line in results.checks:  # the CLI's three marks: a low int8 cosine is a warning, not a failure
                mark, style = CHECK_MARKS.get(line.status, ("? ", ""))
                shown.append(mark, style=style)
                shown.append(line.text + "\n")
            for note in results.notes:  # what validation did not check, and why
                shown.append("note: ", style="yellow")
                shown.append(note + "\n")
            yield Static(shown, id="checks")
            yield Label("Transcripts (real sherpa-ncnn)", classes="section")
            transcripts = Text()
            for wav, fp16, int8 in results.transcripts:
                transcripts.append(f"{wav}: ", style="bold")
                transcripts.append(f"{fp16!r}\n" if int8 is None else f"fp16 {fp16!r}   int8 {int8!r}\n")
            if results.decode_error:
                transcripts.append(results.decode_error, style="red")
            yield Static(transcripts, id="transcripts")
            yield Label("Files written", classes="section")
            yield Static(Text("  ".join(results.files)), id="files")
            yield Label("Use it from Python", classes="section")
            yield Static(Text(logic.sherpa_snippet(self.out_dir)), id="snippet", classes="code")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#sizes", SizeTable)
        table.add_columns("model", "pt", "fp16", "fp32", "int8")
        for row in logic.read_results(self.out_dir).sizes:
            table.add_row(*row)

    def action_back(self) -> None:
        self.app.pop_screen()
