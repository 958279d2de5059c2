"""What every wizard screen shares: the step bar, navigation, the confirm dialog, the form base and small widgets."""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.suggester import Suggester
from textual.widgets import Button, DataTable, Footer, Input, Static

from tui.wizard import logic

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


class Body(VerticalScroll, can_focus=False):
    """The scrollable body of a step: not a Tab stop of its own (the focused field scrolls into view)."""


def meta_key_label(hp) -> str:
    """The key as the SherpaMetaData line writes it: ``-23316`` for an array, ``2`` for a number."""
    return f"key {-23300 - hp.meta_key}" if hp.kind == "int_list" else f"key {hp.meta_key}"


class StepScreen(Screen):
    """A wizard step: title bar, scrollable body, Back/Next, footer."""

    STEP = ""
    NEXT_LABEL = "Next"
    BINDINGS = [Binding("ctrl+n", "next", "Next"), Binding("escape", "back", "Back")]

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        with Body(classes="body"):
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

    def blocked_message(self) -> str:
        """What Next says when it is disabled (a notification: it lands where the eye is at any size)."""
        return "fix the fields marked ✗ first"

    def save(self) -> None:
        """Write the screen's values into app.config."""

    def next_screen(self) -> Screen | None:
        return None

    def action_next(self) -> None:
        if not self.is_current:  # a key queued for this screen after it pushed the next one
            return
        self.refresh_state()
        if not self.can_go_next():
            self.notify(self.blocked_message(), severity="warning", timeout=8)
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


class FieldReason(Static):
    """Why a hyperparameter value is refused (empty when it is fine)."""


class MetaTable(DataTable):
    """SherpaMetaData key → value → which flag it came from."""

    MAX_HEIGHT = 14  # wizard.tcss #meta-table max-height: header + 13 rows before its own scrollbar shows


class WaitsForChecks:
    """Enter (Next) while a background check still runs: go on as soon as the checks are in and fine.

    A screen mixes this in before its Screen class, says in ``pending()`` whether a check is still running, and
    calls ``checks_arrived()`` (instead of refresh_state) when a worker's result is shown."""

    next_wanted = False

    def pending(self):  # pragma: no cover - every screen using this defines it
        raise NotImplementedError

    def checks_arrived(self) -> None:
        self.refresh_state()
        if self.next_wanted and not self.pending():
            self.next_wanted = False
            if self.is_current:
                super().action_next()

    def action_next(self) -> None:
        if self.pending():
            self.next_wanted = True
            self.refresh_state()
            return
        super().action_next()
