"""The wizard's summary and failure panel read kinds and structured results, never the words.

A low int8 cosine is a warning (the CLI's ``[!]``), not a failure; validation's notes are shown; fp16/int8
transcripts come as fields; "fix and resume" focuses the Python field because the hint's kind says so.
"""
from __future__ import annotations

import json

from core.common.hints import hint_for
from core.common.problems import ProblemKind, kind_of
from tui.wizard import checks, logic
from tui.wizard.app import WizardApp
from tui.wizard.run import SummaryScreen

VALIDATION = {
    "ok": True,
    "numeric": [{"net": "joiner", "output": "out0", "max_abs": 1e-3, "tolerance": 1e-2, "ok": True, "note": ""}],
    "decode": {"ok": True, "model": "fp16", "results": [{"wav": "/x/a.wav", "text": "HELLO"}]},
    "decode_int8": {"ok": True, "model": "int8", "results": [{"wav": "/x/a.wav", "text": "HELO"}]},
    "int8_similarity": [{"net": "encoder", "output": "out0", "mean_cosine": 0.93, "min_cosine": 0.81,
                         "samples": 10}],
    "notes": ["int8 encoder out0: mean cosine 0.9300 is below 0.99; the int8 model may be less accurate"],
}


def out_dir(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"sizes": [], "files": ["a"]}))
    (tmp_path / "validation.json").write_text(json.dumps(VALIDATION))
    return tmp_path


def test_results_carry_three_states_notes_and_both_transcripts(tmp_path):
    r = logic.read_results(out_dir(tmp_path))
    assert [(c.status, c.text.split(":")[0]) for c in r.checks] == [
        ("ok", "joiner out0"), ("ok", "sherpa-ncnn (fp16) loaded the model and decoded 1 wav(s)"),
        ("ok", "sherpa-ncnn (int8) loaded the int8 model and decoded 1 wav(s)"), ("warning", "int8 encoder out0 vs fp32")]
    assert r.notes == VALIDATION["notes"]
    assert r.transcripts == [("a.wav", "HELLO", "HELO")]


async def test_summary_marks_a_low_int8_cosine_as_a_warning_and_shows_the_notes(tmp_path):
    app = WizardApp(show_timings=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(SummaryScreen(out_dir(tmp_path)))
        await pilot.pause()
        shown = str(app.screen.query_one("#checks").render())
        assert "! int8 encoder out0 vs fp32: cosine mean 0.9300" in shown
        assert "✗" not in shown
        assert "note: int8 encoder out0: mean cosine 0.9300 is below 0.99" in shown
        transcripts = str(app.screen.query_one("#transcripts").render())
        assert "a.wav: fp16 'HELLO'   int8 'HELO'" in transcripts


async def test_summary_of_an_fp16_run_quotes_the_transcript(tmp_path):
    validation = dict(VALIDATION, int8_similarity=[], notes=[])
    del validation["decode_int8"]
    (tmp_path / "validation.json").write_text(json.dumps(validation))
    app = WizardApp(show_timings=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(SummaryScreen(tmp_path))
        await pilot.pause()
        assert "a.wav: 'HELLO'" in str(app.screen.query_one("#transcripts").render())
        assert "note:" not in str(app.screen.query_one("#checks").render())


def test_the_python_hints_have_their_kind_and_other_hints_that_say_python_do_not():
    for missing in ("k2", "lhotse", "kaldifeat"):
        hint = hint_for(["Traceback (most recent call last):", f"ModuleNotFoundError: No module named '{missing}'"])
        assert kind_of(hint) is ProblemKind.PYTHON_ENV, hint
    # this hint names `python export-for-ncnn.py --help` but is about the flags, not the interpreter
    flags = hint_for(["export-for-ncnn.py: error: unrecognized arguments: --foo"])
    assert "python" in flags and kind_of(flags) is not ProblemKind.PYTHON_ENV
    assert logic.fix_target("export", flags, "exited with code 2") == "files"


def test_the_python_hint_in_wizard_words_names_the_field_not_the_flag():
    hint = hint_for(["ModuleNotFoundError: No module named 'k2'"])
    assert "--python" in hint  # the CLI's words
    said = checks.in_wizard_words(hint)
    assert said.startswith("the export needs icefall's Python environment") and "on Files" in said
    assert "--python" not in said and "wizard.toml" not in said
