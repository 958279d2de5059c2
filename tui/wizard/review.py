"""The last two steps before a run: quantization (fp16 or int8, calibration audio) and review (nothing written yet)."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DataTable, Input, Label, RadioButton, RadioSet, Select, Static
from textual.worker import get_current_worker

from core.model.architectures import get_arch
from core.model.metadata import build_metadata
from core.pipeline.layout import PlanError
from core.pipeline.plan import describe_plan, render_script
from tui.wizard import checks, fit, int8_preview, logic
from tui.wizard.base import MetaTable, StepScreen, WaitsForChecks


class QuantScreen(WaitsForChecks, StepScreen):
    STEP = "Quantization"

    def body(self) -> ComposeResult:
        int8 = self.app.config.output.int8
        with RadioSet(id="quant"):
            yield RadioButton("fp16 (pnnx fp16=1): half-size weights, sherpa-ncnn's usual choice", value=not int8,
                              id="q-fp16")
            yield RadioButton("fp16 + int8: also calibrate with your wavs and quantize encoder and joiner "
                              "(built in, no tools to build)", value=int8, id="q-int8")
        yield Label("Calibration audio (a folder of 16 kHz wavs, a list file, or paths)", classes="section")
        yield Input(" ".join(self.app.config.calibration.wavs), id="cal-wavs")
        yield Static("", id="cal-check", classes="muted")
        yield Checkbox("resample wavs that are not 16 kHz (soxr; your files are only read)",
                       self.app.config.calibration.resample, id="resample")
        yield Label("Who calibrates and quantizes", classes="section", id="backend-label")
        yield Select(logic.int8_backend_options(self.app.config), value=self.app.config.calibration.backend,
                     allow_blank=False, id="int8-backend")
        mc = self.app.config.calibration.min_cosine
        yield Label("Mixed precision: keep the most int8-sensitive layers float until the encoder's and the joiner's "
                    "output cosine reaches (empty: off)", classes="section", id="min-cosine-label")
        yield Input("" if mc is None else str(mc), placeholder="e.g. 0.99", id="min-cosine")
        yield Static("", id="min-cosine-check", classes="muted")
        yield Static("", id="int8-size", classes="muted")

    def _int8(self) -> bool:
        return self.query_one("#q-int8", RadioButton).value

    checked: tuple = ()  # (what the check depends on, ok, lines)

    def check_key(self) -> tuple:
        config = self.app.config
        text = self.query_one("#cal-wavs", Input).value
        return (text, config.calibration.resample, config.arch, tuple(sorted(config.hyperparameter_flags().items())),
                checks.signature(text.strip()) if " " not in text.strip() else ())

    def pending(self) -> bool:
        return self._int8() and (not self.checked or self.checked[0] != self.check_key())

    def refresh_state(self) -> None:
        """The audio is read in a worker (every wav of a calibration folder: seconds), the rest here."""
        self.app.config.calibration.resample = self.query_one("#resample", Checkbox).value
        int8 = self._int8()
        self.query_one("#cal-wavs", Input).disabled = not int8
        self.query_one("#int8-backend", Select).disabled = not int8
        self.query_one("#resample", Checkbox).disabled = not int8
        self.query_one("#min-cosine", Input).disabled = not int8
        _, mc_problem = int8_preview.parse_min_cosine(self.query_one("#min-cosine", Input).value)
        self.query_one("#min-cosine-check", Static).update(Text(mc_problem or "", style="red"))
        self.show_int8_size(int8)
        if not int8:
            ok, text = True, "int8 not chosen: only the fp16 model is made"
        elif self.pending():
            ok, text = False, "… reading the calibration audio"
            self.check_audio_in_thread(self.check_key(), self.query_one("#cal-wavs", Input).value)
        else:
            ok, text = self.checked[1], "\n".join(self.checked[2])
        self.query_one("#cal-check", Static).update(Text(text))
        self.query_one("#next", Button).disabled = not ok or (int8 and mc_problem is not None)

    size_key: tuple | None = None  # the files the shown int8 size was predicted from

    def show_int8_size(self, int8: bool) -> None:
        """Predicted from existing float files in a worker (ncnn reads them in a child process: a second or two)."""
        widget = self.query_one("#int8-size", Static)
        if not int8:
            widget.update("")
            return
        pairs, where = int8_preview.prediction_sources(self.app.config)
        if not pairs:
            widget.update(Text(f"int8 size: {where}"))
            return
        key = tuple((str(p), p.stat().st_mtime_ns) for pair in pairs for p in pair if p.exists())
        if key != self.size_key:
            self.size_key = key
            widget.update(Text(f"int8 size: … predicting from {where}"))
            self.predict_in_thread()

    @work(thread=True, exclusive=True, group="int8-size", exit_on_error=False)
    def predict_in_thread(self) -> None:
        text = int8_preview.predict_text(self.app.config)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_prediction, text)

    def show_prediction(self, text: str) -> None:
        if self.is_attached:
            self.query_one("#int8-size", Static).update(Text(text))

    @work(thread=True, exclusive=True, group="calibration-audio", exit_on_error=False)
    def check_audio_in_thread(self, key: tuple, text: str) -> None:
        ok, lines = logic.calibration_check(logic.calibration_wavs(text), self.app.config)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_audio_check, (key, ok, lines))

    def show_audio_check(self, checked: tuple) -> None:
        if not self.is_attached:
            return
        self.checked = checked
        self.checks_arrived()

    @on(RadioSet.Changed)
    @on(Input.Changed, "#cal-wavs")
    @on(Checkbox.Changed, "#resample")
    @on(Input.Changed, "#min-cosine")
    def _changed(self) -> None:
        self.refresh_state()

    def save(self) -> None:
        self.app.config.output.int8 = self._int8()
        self.app.config.calibration.backend = str(self.query_one("#int8-backend", Select).value)
        if self._int8():
            self.app.config.calibration.wavs = [str(w) for w in
                                                logic.calibration_wavs(self.query_one("#cal-wavs", Input).value)]
            value, problem = int8_preview.parse_min_cosine(self.query_one("#min-cosine", Input).value)
            if problem is None:
                self.app.config.calibration.min_cosine = value

    def next_screen(self) -> Screen:
        return ReviewScreen()


class ReviewScreen(StepScreen):
    STEP = "Review"
    NEXT_LABEL = "Run"
    BINDINGS = [Binding("ctrl+r", "next", "Run"), Binding("ctrl+n", "next", "Run", show=False),
                Binding("ctrl+s", "save_config", "Save config", priority=True),
                Binding("ctrl+e", "save_script", "Save script", priority=True)]  # also while a path field has focus

    def body(self) -> ComposeResult:
        yield Static("Nothing has been written yet. This is exactly what the run will do.", classes="intro",
                     id="nothing-written")
        yield Static("", id="problems", classes="error")
        yield Button("Run anyway: the hyperparameters are right, the checkpoint check is not", id="ignore-mismatch")
        yield Checkbox("trust this checkpoint", id="trust-checkpoint")  # labelled by show_plan with the global
        yield Label("SherpaMetaData line (↑/↓ in the table: the row in full below it)", classes="section")
        yield Static("", id="meta-line", classes="code")
        yield MetaTable(id="meta-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="meta-detail", classes="muted")  # the highlighted row in full (cells may be cut)
        yield Label("Header of encoder_jit_trace-pnnx.ncnn.param", classes="section")
        yield Static("", id="header-change", classes="code")
        yield Label("Steps and their exact commands", classes="section")
        yield Static("", id="commands", classes="commands")
        with Horizontal(classes="save-row"):
            yield Input("wizard.toml", id="config-path")
            yield Button("Save config", id="save-config")
        with Horizontal(classes="save-row"):
            yield Input("export.sh", id="script-path")
            yield Button("Save script", id="save-script")
        yield Static("", id="saved", classes="muted")

    META_COLUMNS = ("key", "value", "from")
    meta_rows: list = []

    def on_mount(self) -> None:
        self.query_one("#ignore-mismatch", Button).display = False  # shown when the plan reports a mismatch
        self.query_one("#trust-checkpoint", Checkbox).display = False  # shown when the safe loader refused the file
        super().on_mount()

    def refresh_state(self) -> None:
        config = self.app.config
        spec = get_arch(config.arch)
        from core.model.architectures import resolve
        resolved = resolve(spec, config.hyperparameter_flags())
        rows = []
        if resolved.ok:
            meta = build_metadata(resolved)
            self.query_one("#meta-line", Static).update(Text(meta.line))
            for e in meta.entries:
                value = ",".join(map(str, e.value)) if isinstance(e.value, tuple) else str(e.value)
                source = e.source
                if e.source.startswith("--"):
                    try:
                        hp = spec.param(e.source.split()[0])
                    except KeyError:
                        hp = None
                    if hp is not None and resolved.sources.get(hp.name) == "default":
                        source += " (default)"
                rows.append((e.text.split("=", 1)[0], value, source))
        else:
            self.query_one("#meta-line", Static).update("(the hyperparameters are not valid)")
        self.meta_rows = rows
        self.fill_meta_table()
        self.planned = None
        self.plan_state = "pending"
        self.query_one("#next", Button).disabled = True
        self.query_one("#commands", Static).update("checking the files and the checkpoint ...")
        self.query_one("#header-change", Static).update(Text(checks.header_change(config, Path(config.output.dir))))
        self.plan_in_thread()

    def fill_meta_table(self) -> None:
        """The rows cut to the table's width (at 80 columns the "from" texts do not fit): no sideways scroll."""
        table = self.query_one("#meta-table", MetaTable)
        width = table.size.width or self.app.size.width - 4  # before the first layout: the body's width
        if len(self.meta_rows) + 1 > MetaTable.MAX_HEIGHT:
            width -= table.styles.scrollbar_size_vertical  # its own scrollbar takes columns then
        widths = fit.column_widths(self.meta_rows, self.META_COLUMNS, width, padding=2 * table.cell_padding)
        self.meta_widths = (table.size.width, widths)
        row = table.cursor_row
        table.clear(columns=True)
        for name, w in zip(self.META_COLUMNS, widths):
            table.add_column(name, width=w, key=name)
        for cells in self.meta_rows:
            table.add_row(*(Text(fit.clip(c, w), no_wrap=True) for c, w in zip(cells, widths)))
        if self.meta_rows:
            table.move_cursor(row=min(row, len(self.meta_rows) - 1))
        self.show_meta_detail(table.cursor_row)

    def show_meta_detail(self, row: int) -> None:
        detail = self.query_one("#meta-detail", Static)
        if not 0 <= row < len(self.meta_rows):
            detail.update("")
            return
        key, value, source = self.meta_rows[row]
        detail.update(Text(f"{key}={value}: {source}"))

    @on(DataTable.RowHighlighted, "#meta-table")
    def _meta_row(self, event: DataTable.RowHighlighted) -> None:
        self.show_meta_detail(event.cursor_row)

    def on_resize(self) -> None:
        self.call_after_refresh(self._refit)

    def _refit(self) -> None:
        """Fill again when the table's width is known (first layout) or changed (the terminal was resized)."""
        table = self.query_one("#meta-table", MetaTable)
        if getattr(self, "meta_widths", (None,))[0] != table.size.width:
            self.fill_meta_table()

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def plan_in_thread(self) -> None:
        """build_plan reads the checkpoint (torch): off the UI thread."""
        untrusted: list = []
        try:
            planned, problems = self.app.plan(), []
        except PlanError as exc:
            planned, problems, untrusted = None, exc.problems, exc.untrusted
        except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed
            planned, problems = None, [f"internal error while planning: {exc!r}"]
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_plan, planned, problems, untrusted)

    def show_plan(self, planned, problems: list[str], untrusted: list | None = None) -> None:
        if not self.is_attached:
            return
        self.planned = planned
        trust = self.query_one("#trust-checkpoint", Checkbox)
        if untrusted:  # name the file and what unpickling it would run; ticking it sets files.trust_checkpoint
            trust.label = "; ".join(
                f"Trust {Path(f).name}: let icefall's export unpickle it although it needs {', '.join(g)} "
                "(that can run any code)" if g else f"Trust {Path(f).name}: it cannot be read safely; let icefall's "
                "export unpickle it anyway (that can run any code)" for f, g in untrusted)
        trust.display = bool(untrusted) or self.app.config.files.trust_checkpoint
        with trust.prevent(Checkbox.Changed):
            trust.value = self.app.config.files.trust_checkpoint
        mismatch = checks.offers_run_anyway(problems)
        self.query_one("#ignore-mismatch", Button).display = planned is None and mismatch
        if planned is None:
            self.plan_state = "error"
            self.query_one("#problems", Static).display = True
            self.query_one("#problems", Static).update(
                Text("The run cannot start:\n" + "\n".join("✗ " + checks.in_wizard_words(p) for p in problems)))
            self.query_one("#commands", Static).update("")
            self.query_one("#next", Button).disabled = True
            return
        self.plan_state = "ok"
        self.query_one("#problems", Static).update(Text("\n".join("! " + w for w in self.planned.warnings)))
        self.query_one("#problems", Static).display = bool(self.planned.warnings)
        self.query_one("#header-change", Static).update(Text(checks.header_change(self.app.config,
                                                                                 self.planned.out_dir)))
        lines = Text()
        for number, title, what in describe_plan(self.planned):
            lines.append(f"{number}. {title}\n", style="bold")
            lines.append(f"   {what}\n")
        self.query_one("#commands", Static).update(lines)
        run = self.query_one("#next", Button)
        run.disabled = False
        run.label = "Resume run" if self.app.resume_next else "Run"
        if not isinstance(self.focused, Input):  # Run was disabled while planning: give it the focus now
            run.focus()

    def action_save_config(self) -> None:
        path = Path(self.query_one("#config-path", Input).value.strip() or "wizard.toml").expanduser()
        self.app.config.save(path)
        self.saved(f"config saved to {path.resolve()}")

    def action_save_script(self) -> None:
        if self.planned is None:
            self.notify("fix the problems first: there is no plan to save", severity="warning")
            return
        from tui.cli.run import _write_script
        path = Path(self.query_one("#script-path", Input).value.strip() or "export.sh").expanduser()
        _write_script(path, render_script(self.planned))
        self.saved(f"script saved to {path.resolve()}")

    def saved(self, message: str) -> None:
        """Under the save rows, and as a notification: those rows are below the screen at 80x24."""
        self.query_one("#saved", Static).update(Text(message))
        self.notify(message, title="saved", timeout=8)

    @on(Button.Pressed, "#ignore-mismatch")
    def _ignore_mismatch(self) -> None:
        """The user confirms: run although the config contradicts the checkpoint (recorded in wizard.toml)."""
        self.app.config.files.ignore_checkpoint_mismatch = True
        self.refresh_state()

    @on(Checkbox.Changed, "#trust-checkpoint")
    def _trust_checkpoint(self, event: Checkbox.Changed) -> None:
        """The user vouches for the checkpoint the safe loader refused (recorded in wizard.toml)."""
        self.app.config.files.trust_checkpoint = event.value
        self.refresh_state()

    @on(Button.Pressed, "#save-config")
    def _save_config(self) -> None:
        self.action_save_config()

    @on(Button.Pressed, "#save-script")
    def _save_script(self) -> None:
        self.action_save_script()

    def action_next(self) -> None:
        if self.planned is None or self.plan_state != "ok":
            self.notify("the run cannot start yet: see the problems at the top" if self.plan_state == "error"
                        else "still checking the files ...", severity="warning")
            return
        error = self.app.start_run(self.planned, resume=self.app.resume_next)
        if error:
            self.notify(error, severity="error")
