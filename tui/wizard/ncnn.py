"""The wizard's "I already have ncnn files" start: pick the pnnx output, then the usual steps.

The directory is only read (the run copies it into the output directory), so
this screen just checks it and says what the run will find there: reference
data for the numeric check, the hyperparameters the encoder's graph reveals
(filled into the form, marked "from the graph"), and what the rewrite step will
do to the encoder. Architecture, quantization and review are the usual screens;
the hyperparameter form refuses an edit the graph contradicts; the plan comes
from core.pipeline.from_ncnn because ``files.from_ncnn`` is set.
"""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Input, Label, Static
from textual.worker import get_current_worker

from tui.wizard import checks, logic
from tui.wizard.base import FieldCheckView, FormScreen, PathSuggester, WaitsForChecks
from tui.wizard.screens import ArchScreen, HyperScreen


class NcnnDirScreen(WaitsForChecks, FormScreen):
    STEP = "Files"
    AUTO_FOCUS = "#ncnn-dir"

    def body(self) -> ComposeResult:
        config = self.app.config
        yield Static("Start from pnnx output you already have: the wizard rewrites what sherpa-ncnn cannot run, "
                     "adds the metadata and validates, on copies.", classes="intro")
        yield Label("directory with {encoder,decoder,joiner}_jit_trace-pnnx.ncnn.{param,bin} (or pnnx's default "
                    "*_jit_trace_pnnx.ncnn.*) and tokens.txt; pnnx's *.pnnx.param and the traced .pt there (or in "
                    "exp/, traced/) give the hyperparameters", classes="field-label")
        yield Input(config.files.from_ncnn, id="ncnn-dir", suggester=PathSuggester())
        yield FieldCheckView("", id="c-ncnn-dir", classes="check")
        yield Static("", id="ncnn-found", classes="muted")
        yield Label("traced modules (optional): the folder with icefall's *_jit_trace-pnnx.pt, when not beside the "
                    "files (needed to convert an encoder pnnx mis-converted again)", classes="field-label")
        yield Input(config.files.traced_dir, id="ncnn-traced", suggester=PathSuggester())
        yield FieldCheckView("", id="c-ncnn-traced", classes="check")
        yield Label("output directory", classes="field-label")
        yield Input(config.output.dir, id="ncnn-out", suggester=PathSuggester())
        yield FieldCheckView("", id="c-ncnn-out", classes="check")
        yield Label("test wavs to decode (16 kHz; a folder, a list file or paths; optional)", classes="field-label")
        yield Input(" ".join(config.validation.wavs), id="ncnn-wavs")

    checked: tuple = ()  # (signature of the directory, its FieldCheck, what was found, blocking reason)

    def _key(self) -> tuple:
        """What the worker's verdict depends on: the directory and the traced-modules folder."""
        traced = self.query_one("#ncnn-traced", Input).value
        return checks.signature(self.query_one("#ncnn-dir", Input).value), checks.signature(traced)

    def pending(self) -> bool:
        return not self.checked or self.checked[0] != self._key()

    def refresh_state(self) -> None:
        """The output directory is checked here; the pnnx directory (seconds for a large encoder) in a worker."""
        source = self.query_one("#ncnn-dir", Input).value
        out_check = logic.check_out_dir(self.query_one("#ncnn-out", Input).value)
        if source.strip() and out_check.ok:
            src = Path(source).expanduser().resolve()
            out = Path(self.query_one("#ncnn-out", Input).value).expanduser().resolve()
            if out == src or src in out.parents:
                out_check = logic.FieldCheck(False, f"{out} is inside the input directory; choose one outside it")
        self.query_one("#c-ncnn-out", FieldCheckView).show(out_check)
        traced_check = logic.check_traced_dir(self.query_one("#ncnn-traced", Input).value)
        self.query_one("#c-ncnn-traced", FieldCheckView).show(traced_check)
        if self.pending():
            self.query_one("#c-ncnn-dir", FieldCheckView).update("… checking")
            self.query_one("#ncnn-found", Static).update("looking at the encoder ...")
            self.query_one("#next").disabled = True
            self.describe_in_thread(source, self.query_one("#ncnn-traced", Input).value)
            return
        _sig, dir_check, lines, blocked = self.checked
        self.query_one("#c-ncnn-dir", FieldCheckView).show(logic.FieldCheck(False, blocked) if blocked else dir_check)
        self.query_one("#ncnn-found", Static).update(Text("\n".join(lines)))
        self.query_one("#next").disabled = not (dir_check.ok and out_check.ok and traced_check.ok and not blocked)

    @work(thread=True, exclusive=True, group="describe", exit_on_error=False)
    def describe_in_thread(self, source: str, traced: str = "") -> None:
        """Checking the directory, parsing and planning the rewrite of a large encoder take seconds: off the UI
        thread. A mis-converted encoder with no traced encoder to convert again blocks here, not at Review."""
        signature = checks.signature(source), checks.signature(traced)
        dir_check = logic.check_ncnn_dir(source)
        arch, detected, lines, blocked = None, None, [], ""
        if dir_check.ok:
            arch = logic.guess_arch(logic.ncnn_encoder_param(source))
            detected = logic.detect_ncnn_graph(source, arch)
            lines = logic.describe_ncnn_dir(source, arch, detected)
            if arch:
                lines.insert(0, f"✓ looks like a {arch} encoder (preselected on the next step)")
            blocked = checks.misconverted_without_trace(source, traced)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_found, source, (signature, dir_check, lines, blocked), arch, detected)

    def show_found(self, source: str, checked: tuple, arch: str | None,
                   detected: "logic.DetectedModel | None" = None) -> None:
        if not self.is_attached or self.query_one("#ncnn-dir", Input).value != source or checked[0] != self._key():
            return
        self.checked = checked
        self.guessed = arch
        self.detected = detected
        self.detected_for = source
        self.checks_arrived()

    guessed: str | None = None
    detected: "logic.DetectedModel | None" = None
    detected_for: str = ""

    def save(self) -> None:
        config = self.app.config
        source = self.query_one("#ncnn-dir", Input).value.strip()
        resolved_source = str(Path(source).expanduser().resolve()) if source else ""
        if source and resolved_source != config.files.from_ncnn:
            if self.guessed:
                config.arch = self.guessed
            # another model: what was typed for the last one does not apply; the graph's values fill the form
            config.hyperparameters = {}
            self.app.detected = None
            if self.detected is not None and self.detected_for == source and self.detected.ok \
                    and self.detected.arch == config.arch:
                self.app.detected = self.detected
                config.hyperparameters = dict(self.detected.hyperparameters)
        config.files.from_ncnn = resolved_source
        traced = self.query_one("#ncnn-traced", Input).value.strip()
        config.files.traced_dir = str(Path(traced).expanduser().resolve()) if traced else ""
        config.output.dir = self.query_one("#ncnn-out", Input).value.strip()
        config.validation.wavs = [str(w) for w in logic.calibration_wavs(self.query_one("#ncnn-wavs", Input).value)]

    def next_screen(self) -> Screen:
        return NcnnArchScreen()


class NcnnArchScreen(ArchScreen):
    """The architecture step of the ncnn-files path: then the form that knows the graph's values."""

    def next_screen(self) -> Screen:
        return NcnnHyperScreen()


class NcnnHyperScreen(HyperScreen):
    """The hyperparameter form, plus: a value the encoder's graph contradicts is refused by its field."""

    def given(self) -> dict[str, str]:
        """An empty field means the graph's value (or the default sized to the graph's stacks), not icefall's."""
        values = super().given()
        detected = self.app.detected
        if detected is not None and getattr(detected, "origin", "") == "graph" and detected.ok:
            for hp in self.spec.hyperparams:
                if not values.get(hp.flag, "").strip() and hp.name in detected.values \
                        and (detected.sources.get(hp.name) == "graph" or hp.kind == "int_list"):
                    values[hp.flag] = detected.values[hp.name]
        return values

    def refresh_state(self) -> None:
        super().refresh_state()
        detected = self.app.detected
        if detected is None or getattr(detected, "origin", "") != "graph":
            return
        wrong = detected.contradictions(self.given())
        for flag, message in wrong.items():
            name = self.spec.param(flag).name
            reason = self.query_one(f"#r-{name}")
            reason.update(Text("✗ " + message))
            reason.display = True
            self.query_one(f"#hp-{name}", Input).set_class(True, "-invalid")
        if wrong:
            self.query_one("#next").disabled = True
            self.query_one("#nav-note", Static).update(
                Text(f"✗ {', '.join(wrong)} contradict(s) the encoder's graph", style="red"))
