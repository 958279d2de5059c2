"""The wizard's "I already have ncnn files" start: pick the pnnx output, then the usual steps.

The directory is only read (the run copies it into the output directory), so
this screen just checks it and says what the run will find there: reference
data for the numeric check, and what the rewrite step will do to the encoder.
Architecture, hyperparameters, quantization and review are the usual screens;
the plan comes from core.from_ncnn because ``files.from_ncnn`` is set.
"""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Input, Label, Static
from textual.worker import get_current_worker

from core.pipeline import ncnn_name

from . import wizard_logic as logic
from .wizard_screens import ArchScreen, FieldCheckView, FormScreen, PathSuggester


class NcnnDirScreen(FormScreen):
    STEP = "Files"
    AUTO_FOCUS = "#ncnn-dir"

    def body(self) -> ComposeResult:
        config = self.app.config
        yield Static("Start from pnnx output you already have: the wizard rewrites what sherpa-ncnn cannot run, "
                     "adds the metadata and validates, on copies.", classes="intro")
        yield Label("directory with {encoder,decoder,joiner}_jit_trace-pnnx.ncnn.{param,bin} and tokens.txt",
                    classes="field-label")
        yield Input(config.files.from_ncnn, id="ncnn-dir", suggester=PathSuggester())
        yield FieldCheckView("", id="c-ncnn-dir", classes="check")
        yield Static("", id="ncnn-found", classes="muted")
        yield Label("output directory", classes="field-label")
        yield Input(config.output.dir, id="ncnn-out", suggester=PathSuggester())
        yield FieldCheckView("", id="c-ncnn-out", classes="check")
        yield Label("test wavs to decode (16 kHz; a folder, a list file or paths; optional)", classes="field-label")
        yield Input(" ".join(config.validation.wavs), id="ncnn-wavs")

    def refresh_state(self) -> None:
        source = self.query_one("#ncnn-dir", Input).value
        dir_check = logic.check_ncnn_dir(source)
        out_check = logic.check_out_dir(self.query_one("#ncnn-out", Input).value)
        if dir_check.ok and out_check.ok:
            src = Path(source).expanduser().resolve()
            out = Path(self.query_one("#ncnn-out", Input).value).expanduser().resolve()
            if out == src or src in out.parents:
                out_check = logic.FieldCheck(False, f"{out} is inside the input directory; choose one outside it")
        self.query_one("#c-ncnn-dir", FieldCheckView).show(dir_check)
        self.query_one("#c-ncnn-out", FieldCheckView).show(out_check)
        ok = dir_check.ok and out_check.ok
        self.query_one("#next").disabled = not ok
        if dir_check.ok:
            self.query_one("#ncnn-found", Static).update("looking at the encoder ...")
            self.describe_in_thread(source)
        else:
            self.query_one("#ncnn-found", Static).update("")

    @work(thread=True, exclusive=True, group="describe", exit_on_error=False)
    def describe_in_thread(self, source: str) -> None:
        """Parsing and planning the rewrite of a large encoder takes a moment: off the UI thread."""
        arch = logic.guess_arch(Path(source).expanduser().resolve() / ncnn_name("encoder", "param"))
        lines = logic.describe_ncnn_dir(source, arch)
        if arch:
            lines.insert(0, f"✓ looks like a {arch} encoder (preselected on the next step)")
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_found, source, arch, lines)

    def show_found(self, source: str, arch: str | None, lines: list[str]) -> None:
        if not self.is_attached or self.query_one("#ncnn-dir", Input).value != source:
            return
        self.query_one("#ncnn-found", Static).update(Text("\n".join(lines)))
        self.guessed = arch

    guessed: str | None = None

    def save(self) -> None:
        config = self.app.config
        source = self.query_one("#ncnn-dir", Input).value.strip()
        if source and source != config.files.from_ncnn and self.guessed and not config.hyperparameters:
            config.arch = self.guessed
        config.files.from_ncnn = str(Path(source).expanduser().resolve()) if source else ""
        config.output.dir = self.query_one("#ncnn-out", Input).value.strip()
        config.validation.wavs = [str(w) for w in logic.calibration_wavs(self.query_one("#ncnn-wavs", Input).value)]

    def next_screen(self) -> Screen:
        return ArchScreen()
