"""The wizard's step screens: start, model files, architecture, hyperparameters, quantization, review.

Each step is a Screen pushed on the App's stack; Back pops it, so the earlier
screen comes back with everything still typed in. Every screen also writes
what it holds into ``app.config`` when leaving, so a screen built anew (after
Back and Next) starts from the same values.
"""
from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, RadioButton, RadioSet, Select, Static
from textual.worker import get_current_worker

from core.model.architectures import ARCHITECTURES, get_arch
from tui.wizard import checks, logic
from tui.wizard.base import (Body, FieldCheckView, FieldReason, FormScreen, PathSuggester, StepBar, StepScreen,
                              WaitsForChecks, meta_key_label)
from tui.wizard.review import QuantScreen

# -- 1. start ------------------------------------------------------------------------

class StartScreen(Screen):
    """Demo or your own model, or open a saved wizard.toml."""

    BINDINGS = [Binding("d", "demo", "Demo"), Binding("m", "own", "My model"), Binding("n", "ncnn", "ncnn files"),
                Binding("o", "open", "Open toml")]

    def compose(self) -> ComposeResult:
        yield StepBar("Start")
        with Body(classes="body"):
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
        self.show_open_error(self.app.open_config(str(path)))

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
            self.notify("type the path of a wizard.toml, then Enter")
            return
        self.show_open_error(self.app.open_config(path))

    def show_open_error(self, error: str | None) -> None:
        """Under the field, and as a notification: at 80x24 the field's line can be below the screen."""
        self.query_one("#open-error", Static).update(error or "")
        if error:
            self.notify(error, title="cannot open that wizard.toml", severity="error", timeout=12)

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


class FilesScreen(WaitsForChecks, FormScreen):
    STEP = "Files"

    def body(self) -> ComposeResult:
        values = logic.file_values(self.app.config)
        if self.app.config.demo:
            yield Static(f"The bundled {get_arch(self.app.config.arch).title} demo: everything is filled in.",
                         classes="intro")
        for key, label, _check in checks.file_checks():
            yield Label(label, classes="field-label")
            yield Input(values[key], id=f"f-{key}", suggester=PathSuggester())
            yield FieldCheckView("", id=f"c-{key}", classes="check")
        with Horizontal(classes="save-row"):
            yield Button("Detect from checkpoint", id="detect")
        yield Static("", id="detect-result", classes="muted")

    BINDINGS = StepScreen.BINDINGS + [Binding("ctrl+d", "detect", "Detect from checkpoint", priority=True)]
    AUTO_FOCUS = "#f-recipe"  # typing starts in the first field

    def on_mount(self) -> None:
        self.results: dict[str, tuple[tuple, logic.FieldCheck]] = {}  # field -> (signature, result)
        self.next_wanted = False
        super().on_mount()
        # focusing the first field scrolls it to the top edge, its label above out of sight: show the top
        self.call_after_refresh(lambda: self.query_one(".body").scroll_home(animate=False))

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
        self.notify(result.message, title="detect from checkpoint", severity="information" if result.ok else "error",
                    timeout=10)  # the result's line is below the fields, off a small screen
        if result.ok:
            self.app.config.arch = result.arch
            self.app.config.hyperparameters = dict(result.hyperparameters)
            self.app.detected = result

    @on(Button.Pressed, "#detect")
    def _detect(self) -> None:
        self.action_detect()

    def values(self) -> dict[str, str]:
        return {key: self.query_one(f"#f-{key}", Input).value for key, _l, _c in checks.file_checks()}

    def pending(self) -> list[str]:
        """The fields whose check for the value now typed (and the file now on disk) is not known yet."""
        values = self.values()
        return [key for key in values if self.results.get(key, ((),))[0] != checks.signature(values[key])]

    def refresh_state(self) -> None:
        pending = self.pending()
        ok = not pending
        for key, _label, _check in checks.file_checks():
            if key in pending:
                self.query_one(f"#c-{key}", FieldCheckView).update("… checking")
                continue
            result = self.results[key][1]
            self.query_one(f"#c-{key}", FieldCheckView).show(result)
            ok = ok and result.ok
        self.query_one("#next", Button).disabled = not ok
        note = "" if ok else ("… checking the files" if pending else Text("✗ fix the fields marked ✗ to go on",
                                                                           style="red"))
        self.query_one("#nav-note", Static).update(note)
        if pending:
            self.check_in_thread(self.values(), pending)

    @work(thread=True, exclusive=True, group="file-checks", exit_on_error=False)
    def check_in_thread(self, values: dict[str, str], keys: list[str]) -> None:
        """Reading a checkpoint imports torch, a bpe.model loads sentencepiece: off the UI thread."""
        found = {}
        for key, _label, check in checks.file_checks():
            if key in keys:
                found[key] = (checks.signature(values[key]), check(values[key]))
                if get_current_worker().is_cancelled:
                    return
        self.app.call_from_thread(self.show_checks, found)

    def show_checks(self, found: dict) -> None:
        if not self.is_attached:
            return
        self.results.update(found)
        self.checks_arrived()

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


class HyperScreen(StepScreen):
    """A form generated from ArchSpec.hyperparams, validated by core.model.architectures.resolve."""

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
                tags.append(meta_key_label(hp))
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
            tags = [mark] + ([meta_key_label(hp)] if hp.meta_key is not None else []) \
                + (["training only"] if hp.training_only else [])
            self.query_one(f"#d-{hp.name}", Static).update(" · ".join(tags))
            self.query_one(f"#d-{hp.name}", Static).set_class(is_default, "is-default")
        self.query_one("#cross-errors", Static).update(Text("\n".join("✗ " + e for e in state.cross_errors)))
        self.query_one("#warnings", Static).update(Text("\n".join("! " + w for w in state.warnings)))
        self.query_one("#next", Button).disabled = not state.ok
        bad = list(state.field_errors) + (["cross-field"] if state.cross_errors else [])
        self.query_one("#nav-note", Static).update(
            Text(f"✗ fix {', '.join(bad)} to go on", style="red") if bad else "")

    def blocked_message(self) -> str:
        """The reasons themselves (the cross-field ones are at the bottom of a long form, off a small screen)."""
        state = logic.form_state(self.spec, self.given())
        reasons = [f"{flag}: {'; '.join(errs)}" for flag, errs in state.field_errors.items()] + state.cross_errors
        if state.cross_errors:
            self.query_one("#cross-errors", Static).scroll_visible()
        return "\n".join("✗ " + r for r in reasons) or super().blocked_message()

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


# -- 6. review -------------------------------------------------------------------------------


