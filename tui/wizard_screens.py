"""The wizard's step screens: start, model files, architecture, hyperparameters, quantization, review.

Each step is a Screen pushed on the App's stack; Back pops it, so the earlier
screen comes back with everything still typed in. Every screen also writes
what it holds into ``app.config`` when leaving, so a screen built anew (after
Back and Next) starts from the same values.
"""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.suggester import Suggester
from textual.worker import get_current_worker
from textual.widgets import (Button, Checkbox, DataTable, Footer, Input, Label, RadioButton, RadioSet, Select,
                             Static)

from core.architectures import ARCHITECTURES, get_arch
from core.metadata import build_metadata
from core.pipeline import PlanError, describe_plan, render_script

from . import wizard_logic as logic

STEPS = ("Start", "Files", "Architecture", "Hyperparameters", "Quantization", "Review", "Run", "Summary")
SHORT = {"Architecture": "Arch", "Hyperparameters": "Hyperparams", "Quantization": "Quant"}


class StepBar(Static):
    """Which step of the wizard this is."""

    def __init__(self, current: str):
        parts = []
        for i, name in enumerate(STEPS, start=1):
            label = SHORT.get(name, name)
            parts.append(f"[reverse] {i} {label} [/]" if name == current else f" {i} {label} ")
        super().__init__("".join(parts), classes="step-bar")


class Nav(Horizontal):
    """Back / Next buttons at the bottom of a step."""

    def __init__(self, next_label: str = "Next", back: bool = True):
        super().__init__(classes="nav")
        self.next_label = next_label
        self.back = back

    def compose(self) -> ComposeResult:
        if self.back:
            yield Button("Back", id="back")
        yield Static("", classes="nav-gap", id="nav-note")
        yield Button(self.next_label, id="next", variant="primary")


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes", id="yes", variant="error")
                yield Button("No", id="no", variant="primary")

    AUTO_FOCUS = "#no"

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class StepScreen(Screen):
    """A wizard step: title bar, scrollable body, Back/Next, footer."""

    STEP = ""
    NEXT_LABEL = "Next"
    BINDINGS = [Binding("ctrl+n", "next", "Next"), Binding("escape", "back", "Back")]

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        with VerticalScroll(classes="body"):
            yield from self.body()
        yield Nav(self.NEXT_LABEL)
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    AUTO_FOCUS = "#next"

    def on_mount(self) -> None:
        self.refresh_state()

    def refresh_state(self) -> None:
        """Recompute checks and enable/disable Next."""

    def can_go_next(self) -> bool:
        return not self.query_one("#next", Button).disabled

    def save(self) -> None:
        """Write the screen's values into app.config."""

    def next_screen(self) -> Screen | None:
        return None

    def action_next(self) -> None:
        self.refresh_state()
        if not self.can_go_next():
            self.notify("fix the fields marked ✗ first", severity="warning")
            return
        self.save()
        screen = self.next_screen()
        if screen is not None:
            self.app.push_screen(screen)

    def action_back(self) -> None:
        self.save()
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    @on(Button.Pressed, "#next")
    def _next(self) -> None:
        self.action_next()

    @on(Button.Pressed, "#back")
    def _back(self) -> None:
        self.action_back()


# -- 1. start ------------------------------------------------------------------------

class StartScreen(Screen):
    """Demo or your own model, or open a saved wizard.toml."""

    BINDINGS = [Binding("d", "demo", "Demo"), Binding("m", "own", "My model"), Binding("n", "ncnn", "ncnn files"),
                Binding("o", "open", "Open toml")]

    def compose(self) -> ComposeResult:
        yield StepBar("Start")
        with VerticalScroll(classes="body"):
            yield Static("Take an icefall streaming transducer to a verified sherpa-ncnn model. Nothing is "
                         "written until you start the run on the Review step.", classes="intro")
            with Horizontal(classes="choice"):
                yield Button("Use the bundled demo", id="demo", variant="primary")
                yield RadioSet(*[RadioButton(spec.title, value=(name == "zipformer"), id=f"arch-{name}")
                                 for name, spec in ARCHITECTURES.items()], id="demo-arch")
            with Horizontal(classes="choice"):
                yield Button("Export my model", id="own")
                yield Static("your icefall recipe, checkpoint and tokens", classes="muted")
            with Horizontal(classes="choice"):
                yield Button("I already have ncnn files", id="ncnn")
                yield Static("pnnx output sherpa-ncnn won't load: rewrite, metadata, validate",
                             classes="muted")
            with Horizontal(classes="choice"):
                yield Button("Open wizard.toml", id="open")
                yield Input(placeholder="path/to/wizard.toml", id="toml")
            yield Static("", id="open-error", classes="error")
            runs = logic.recent_run_choices()
            if runs:
                yield Label("Recent runs (opens their wizard.toml at Review)", classes="section")
                for i, (label, _path) in enumerate(runs):
                    yield Button(label, id=f"recent-{i}", classes="recent")
        yield Footer()

    @on(Button.Pressed, ".recent")
    def _recent(self, event: Button.Pressed) -> None:
        index = int((event.button.id or "recent-0").removeprefix("recent-"))
        _label, path = logic.recent_run_choices()[index]
        error = self.app.open_config(str(path))
        self.query_one("#open-error", Static).update(error or "")

    AUTO_FOCUS = "#demo"

    def demo_arch(self) -> str:
        pressed = self.query_one("#demo-arch", RadioSet).pressed_button
        return pressed.id.removeprefix("arch-") if pressed and pressed.id else "zipformer"

    def action_demo(self) -> None:
        self.app.use_demo(self.demo_arch())

    def action_own(self) -> None:
        self.app.use_own_model()

    def action_ncnn(self) -> None:
        self.app.use_existing_ncnn()

    @on(Button.Pressed, "#ncnn")
    def _ncnn(self) -> None:
        self.action_ncnn()

    def action_open(self) -> None:
        path = self.query_one("#toml", Input).value.strip()
        if not path:
            self.query_one("#toml", Input).focus()
            self.query_one("#open-error", Static).update("type the path of a wizard.toml, then Enter")
            return
        error = self.app.open_config(path)
        self.query_one("#open-error", Static).update(error or "")

    @on(Button.Pressed, "#demo")
    def _demo(self) -> None:
        self.action_demo()

    @on(Button.Pressed, "#own")
    def _own(self) -> None:
        self.action_own()

    @on(Button.Pressed, "#open")
    @on(Input.Submitted, "#toml")
    def _open(self) -> None:
        self.action_open()


# -- 2. model files ---------------------------------------------------------------------

class PathSuggester(Suggester):
    """Tab-completes paths in the file fields (Textual shows the suggestion; right arrow accepts it)."""

    def __init__(self):
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return logic.PathCompletion.complete(value)


class FieldCheckView(Static):
    """✓/✗ and the reason, under an input."""

    def show(self, check: logic.FieldCheck) -> None:
        self.update(Text(("✓ " if check.ok else "✗ ") + check.message))
        self.set_class(not check.ok, "bad")


class FormScreen(StepScreen):
    """A step made of text fields: every edit re-checks them, Enter in a field means Next."""

    @on(Input.Changed)
    def _changed(self) -> None:
        self.refresh_state()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_next()


class FilesScreen(FormScreen):
    STEP = "Files"

    def body(self) -> ComposeResult:
        values = logic.file_values(self.app.config)
        if self.app.config.demo:
            yield Static(f"The bundled {get_arch(self.app.config.arch).title} demo: everything is filled in.",
                         classes="intro")
        for key, label, _check in logic.FILE_FIELDS:
            yield Label(label, classes="field-label")
            yield Input(values[key], id=f"f-{key}", suggester=PathSuggester())
            yield FieldCheckView("", id=f"c-{key}", classes="check")
        with Horizontal(classes="save-row"):
            yield Button("Detect from checkpoint", id="detect")
        yield Static("", id="detect-result", classes="muted")

    BINDINGS = StepScreen.BINDINGS + [Binding("ctrl+d", "detect", "Detect from checkpoint")]

    def action_detect(self) -> None:
        self.save()
        self.query_one("#detect-result", Static).update("reading the checkpoint (safely: no code runs) ...")
        self.detect_in_thread(self.app.config.files.checkpoint)

    @work(thread=True, exclusive=True, group="detect", exit_on_error=False)
    def detect_in_thread(self, path: str) -> None:
        """torch is imported to read the checkpoint: off the UI thread."""
        result = logic.detect_checkpoint(path)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_detected, result)

    def show_detected(self, result: "logic.DetectedModel") -> None:
        if not self.is_attached:
            return
        self.query_one("#detect-result", Static).update(Text(result.message))
        if result.ok:
            self.app.config.arch = result.arch
            self.app.config.hyperparameters = dict(result.hyperparameters)
            self.app.detected = result

    @on(Button.Pressed, "#detect")
    def _detect(self) -> None:
        self.action_detect()

    def values(self) -> dict[str, str]:
        return {key: self.query_one(f"#f-{key}", Input).value for key, _l, _c in logic.FILE_FIELDS}

    def refresh_state(self) -> None:
        ok = True
        for key, _label, check in logic.FILE_FIELDS:
            result = check(self.query_one(f"#f-{key}", Input).value)
            self.query_one(f"#c-{key}", FieldCheckView).show(result)
            ok = ok and result.ok
        self.query_one("#next", Button).disabled = not ok
        self.query_one("#nav-note", Static).update("" if ok else Text("✗ fix the fields marked ✗ to go on",
                                                                        style="red"))

    def save(self) -> None:
        logic.apply_file_values(self.app.config, self.values())

    def next_screen(self) -> Screen:
        return ArchScreen()


# -- 3. architecture ---------------------------------------------------------------------

class ArchScreen(StepScreen):
    STEP = "Architecture"

    def body(self) -> ComposeResult:
        current = get_arch(self.app.config.arch).name
        yield RadioSet(*[RadioButton(spec.title, value=(name == current), id=f"a-{name}")
                         for name, spec in ARCHITECTURES.items()], id="arch")
        yield Static("", id="arch-recipe", classes="recipe")
        yield Static("", id="arch-summary", classes="summary")
        yield Static("Zipformer2 (egs/*/ASR/zipformer) has no ncnn path in sherpa-ncnn: use sherpa-onnx for it.",
                     classes="muted")

    def selected(self) -> str:
        pressed = self.query_one("#arch", RadioSet).pressed_button
        return pressed.id.removeprefix("a-") if pressed and pressed.id else self.app.config.arch

    def refresh_state(self) -> None:
        spec = get_arch(self.selected())
        self.query_one("#arch-recipe", Static).update(Text(f"icefall recipe: {spec.recipe}"))
        self.query_one("#arch-summary", Static).update(spec.summary)

    @on(RadioSet.Changed)
    def _changed(self) -> None:
        self.refresh_state()

    def save(self) -> None:
        arch = self.selected()
        if arch != self.app.config.arch:
            self.app.config.arch = arch
            self.app.config.hyperparameters = {}
            self.app.detected = None  # the detection was for another architecture

    def next_screen(self) -> Screen:
        return HyperScreen()


# -- 4. hyperparameters --------------------------------------------------------------------

class FieldReason(Static):
    """Why a hyperparameter value is refused (empty when it is fine)."""


class HyperScreen(StepScreen):
    """A form generated from ArchSpec.hyperparams, validated by core.architectures.resolve."""

    STEP = "Hyperparameters"
    BINDINGS = [Binding("ctrl+f", "focus_paste", "Paste flags")]

    def body(self) -> ComposeResult:
        self.spec = get_arch(self.app.config.arch)
        given = self.app.config.hyperparameters
        yield Static(f"{self.spec.title}: icefall's flag names; empty means icefall's default. Paste the flags of "
                     "your export-for-ncnn.py command below to fill the form.", classes="intro")
        presets = logic.presets_for(self.spec.name)
        if presets:
            yield Select([(f"{p.name}: {p.description}", p.name) for p in presets], prompt="Preset: a published "
                         "model's exact export flags", id="preset", allow_blank=True)
        with Horizontal(classes="paste-row"):
            yield Input(placeholder="./export-for-ncnn.py --epoch 30 --num-encoder-layers 2,4,3,2,4 ...",
                        id="paste")
            yield Button("Fill", id="fill")
        yield Static("", id="paste-result", classes="muted")
        for hp in self.spec.hyperparams:
            value = given.get(hp.flag.lstrip("-"), given.get(hp.name, ""))
            tags = [f"default {hp.default}"]
            if hp.meta_key is not None:
                tags.append(f"key {hp.meta_key}")
            if hp.training_only:
                tags.append("training only")
            with Horizontal(classes="hp-row"):
                yield Label(hp.flag, classes="hp-flag")
                yield Input(str(value), placeholder=hp.default, id=f"hp-{hp.name}", classes="hp-input",
                            compact=True)
                yield Static(" · ".join(tags), id=f"d-{hp.name}", classes="hp-default")
            yield FieldReason("", id=f"r-{hp.name}", classes="reason")
        yield Static("", id="cross-errors", classes="error")
        yield Static("", id="warnings", classes="warning")

    def given(self) -> dict[str, str]:
        return {hp.flag: self.query_one(f"#hp-{hp.name}", Input).value for hp in self.spec.hyperparams}

    def refresh_state(self) -> None:
        state = logic.form_state(self.spec, self.given())
        for hp in self.spec.hyperparams:
            errors = state.field_errors.get(hp.flag, [])
            reason = self.query_one(f"#r-{hp.name}", FieldReason)
            reason.update(Text("✗ " + "; ".join(errors)) if errors else "")
            reason.display = bool(errors)
            self.query_one(f"#hp-{hp.name}", Input).set_class(bool(errors), "-invalid")
            is_default = state.resolved.sources.get(hp.name) == "default"
            mark = logic.field_mark(hp.name, self.query_one(f"#hp-{hp.name}", Input).value, hp.default,
                                    self.app.detected)
            tags = [mark] + ([f"key {hp.meta_key}"] if hp.meta_key is not None else []) \
                + (["training only"] if hp.training_only else [])
            self.query_one(f"#d-{hp.name}", Static).update(" · ".join(tags))
            self.query_one(f"#d-{hp.name}", Static).set_class(is_default, "is-default")
        self.query_one("#cross-errors", Static).update(Text("\n".join("✗ " + e for e in state.cross_errors)))
        self.query_one("#warnings", Static).update(Text("\n".join("! " + w for w in state.warnings)))
        self.query_one("#next", Button).disabled = not state.ok
        bad = list(state.field_errors) + (["cross-field"] if state.cross_errors else [])
        self.query_one("#nav-note", Static).update(
            Text(f"✗ fix {', '.join(bad)} to go on", style="red") if bad else "")

    @on(Input.Changed, ".hp-input")
    def _changed(self) -> None:
        self.refresh_state()

    @on(Input.Submitted, ".hp-input")
    def _submitted(self) -> None:
        self.action_next()

    @on(Select.Changed, "#preset")
    def fill_from_preset(self, event: Select.Changed) -> None:
        if event.value is Select.BLANK or event.value is None:
            return
        values = logic.preset_values(str(event.value))
        for hp in self.spec.hyperparams:
            self.query_one(f"#hp-{hp.name}", Input).value = values.get(hp.flag, "")
        self.query_one("#paste-result", Static).update(Text(f"filled from the preset {event.value}"))
        self.refresh_state()

    def action_focus_paste(self) -> None:
        self.query_one("#paste", Input).focus()

    @on(Button.Pressed, "#fill")
    @on(Input.Submitted, "#paste")
    def fill_from_paste(self) -> None:
        text = self.query_one("#paste", Input).value
        try:
            pasted = logic.parse_pasted_flags(self.spec, text)
        except ValueError as exc:
            self.query_one("#paste-result", Static).update(Text(f"✗ cannot read that command line: {exc}"))
            return
        for flag, value in pasted.values.items():
            self.query_one(f"#hp-{self.spec.param(flag).name}", Input).value = value
        parts = [f"filled {len(pasted.values)} flag(s)"]
        if pasted.ignored:
            parts.append("ignored (not model flags): " + " ".join(pasted.ignored))
        if pasted.unknown:
            parts.append(f"not {self.spec.title} flags: " + " ".join(pasted.unknown))
        self.query_one("#paste-result", Static).update(Text("; ".join(parts)))
        self.refresh_state()

    def save(self) -> None:
        self.app.config.hyperparameters = {flag.lstrip("-"): v.strip() for flag, v in self.given().items()
                                           if v.strip()}

    def next_screen(self) -> Screen:
        return QuantScreen()


# -- 5. quantization -----------------------------------------------------------------------

class QuantScreen(StepScreen):
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

    def _int8(self) -> bool:
        return self.query_one("#q-int8", RadioButton).value

    def refresh_state(self) -> None:
        self.app.config.calibration.resample = self.query_one("#resample", Checkbox).value
        wavs = logic.calibration_wavs(self.query_one("#cal-wavs", Input).value)
        ok, lines = logic.calibration_check(wavs, self.app.config) if self._int8() else (True, [])
        self.query_one("#cal-wavs", Input).disabled = not self._int8()
        self.query_one("#int8-backend", Select).disabled = not self._int8()
        self.query_one("#resample", Checkbox).disabled = not self._int8()
        self.query_one("#cal-check", Static).update(Text("\n".join(lines) if self._int8()
                                                         else "int8 not chosen: only the fp16 model is made"))
        self.query_one("#next", Button).disabled = not ok

    @on(RadioSet.Changed)
    @on(Input.Changed, "#cal-wavs")
    @on(Checkbox.Changed, "#resample")
    def _changed(self) -> None:
        self.refresh_state()

    def save(self) -> None:
        self.app.config.output.int8 = self._int8()
        self.app.config.calibration.backend = str(self.query_one("#int8-backend", Select).value)
        if self._int8():
            self.app.config.calibration.wavs = [str(w) for w in
                                                logic.calibration_wavs(self.query_one("#cal-wavs", Input).value)]

    def next_screen(self) -> Screen:
        return ReviewScreen()


# -- 6. review -------------------------------------------------------------------------------

class MetaTable(DataTable):
    """SherpaMetaData key → value → which flag it came from."""


class ReviewScreen(StepScreen):
    STEP = "Review"
    NEXT_LABEL = "Run"
    BINDINGS = [Binding("ctrl+r", "next", "Run"), Binding("ctrl+n", "next", "Run", show=False),
                Binding("ctrl+s", "save_config", "Save config"),
                Binding("ctrl+e", "save_script", "Save script")]

    def body(self) -> ComposeResult:
        yield Static("Nothing has been written yet. This is exactly what the run will do.", classes="intro",
                     id="nothing-written")
        yield Static("", id="problems", classes="error")
        yield Button("Run anyway: the hyperparameters are right, the checkpoint check is not", id="ignore-mismatch")
        yield Checkbox("trust this checkpoint", id="trust-checkpoint")  # labelled by show_plan with the global
        yield Label("SherpaMetaData line", classes="section")
        yield Static("", id="meta-line", classes="code")
        yield MetaTable(id="meta-table", cursor_type="row", zebra_stripes=True)
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

    def on_mount(self) -> None:
        table = self.query_one("#meta-table", MetaTable)
        table.add_columns("key", "value", "from")
        self.query_one("#ignore-mismatch", Button).display = False  # shown when the plan reports a mismatch
        self.query_one("#trust-checkpoint", Checkbox).display = False  # shown when the safe loader refused the file
        super().on_mount()

    def refresh_state(self) -> None:
        config = self.app.config
        spec = get_arch(config.arch)
        from core.architectures import resolve
        resolved = resolve(spec, config.hyperparameter_flags())
        table = self.query_one("#meta-table", MetaTable)
        table.clear()
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
                table.add_row(e.text.split("=", 1)[0], value, source)
        else:
            self.query_one("#meta-line", Static).update("(the hyperparameters are not valid)")
        self.planned = None
        self.plan_state = "pending"
        self.query_one("#next", Button).disabled = True
        self.query_one("#commands", Static).update("checking the files and the checkpoint ...")
        self.query_one("#header-change", Static).update(Text(logic.header_change(Path(config.output.dir))))
        self.plan_in_thread()

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
        mismatch = any("ignore_checkpoint_mismatch" in p for p in problems)
        self.query_one("#ignore-mismatch", Button).display = planned is None and mismatch
        if planned is None:
            self.plan_state = "error"
            self.query_one("#problems", Static).display = True
            self.query_one("#problems", Static).update(
                Text("The run cannot start:\n" + "\n".join("✗ " + p for p in problems)))
            self.query_one("#commands", Static).update("")
            self.query_one("#next", Button).disabled = True
            return
        self.plan_state = "ok"
        self.query_one("#problems", Static).update(Text("\n".join("! " + w for w in self.planned.warnings)))
        self.query_one("#problems", Static).display = bool(self.planned.warnings)
        self.query_one("#header-change", Static).update(Text(logic.header_change(
            self.planned.out_dir, self.app.config.files.from_ncnn, self.app.config.arch)))
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
        self.query_one("#saved", Static).update(Text(f"config saved to {path.resolve()}"))

    def action_save_script(self) -> None:
        if self.planned is None:
            self.notify("fix the problems first: there is no plan to save", severity="warning")
            return
        from .cli_run import _write_script
        path = Path(self.query_one("#script-path", Input).value.strip() or "export.sh").expanduser()
        _write_script(path, render_script(self.planned))
        self.query_one("#saved", Static).update(Text(f"script saved to {path.resolve()}"))

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
