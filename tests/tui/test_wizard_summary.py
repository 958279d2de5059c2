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


SIZES = [{"model": "encoder", "pt": 900_000, "fp16": 450_000, "fp32": 900_000, "int8": 250_000},
         {"model": "joiner", "pt": 40_000, "fp16": 15_000, "fp32": 30_000, "int8": 9_000}]
BY_TYPE = {"Gemm": {"layers": 4, "int8": 0, "int8-weight-only": 4, "fp16": 0, "fp32": 0, "bytes_fp16": 300_000,
                    "bytes_after": 150_000},
           "Convolution1D": {"layers": 2, "int8": 0, "int8-weight-only": 0, "fp16": 2, "fp32": 0,
                             "bytes_fp16": 75_000, "bytes_after": 75_000},
           "InnerProduct": {"layers": 4, "int8": 3, "int8-weight-only": 0, "fp16": 0, "fp32": 1,
                            "bytes_fp16": 60_000, "bytes_after": 20_000}}


def test_charts_scale_sizes_and_stack_int8_kinds_in_proportion():
    from core.common.charts import kind_chart, size_chart
    sizes = size_chart(SIZES, width=36)
    full = next(line for line in sizes if "encoder" in line and " pt " in line)
    half = next(line for line in sizes if " fp16 " in line and "439.5 KB" in line)
    assert full.count("█") == 36 and half.count("█") == 18  # 450 KB is half of the 900 KB bar
    kinds = kind_chart(BY_TYPE, width=20)
    assert kinds[0].split()[0] == "Gemm" and "▓" * 20 in kinds[0]  # largest type first, all weight-only
    inner = next(line for line in kinds if line.split()[0] == "InnerProduct")
    assert inner.count("█") == 3 and inner.count("░") == 1  # 3 of 4 layers int8, 1 fp32, in 4 cells
    assert "int8 weights only" in kinds[-1]
    assert all(len(line) <= 80 for line in sizes + kinds)


async def test_summary_draws_sizes_int8_kinds_and_sensitivity(tmp_path):
    d = out_dir(tmp_path)
    (d / "summary.json").write_text(json.dumps({"sizes": SIZES, "files": ["a"],
                                                "int8_layers": {"by_type": BY_TYPE}}))
    (d / "int8-layers.json").write_text(json.dumps({"layers": [
        {"net": "encoder", "layer": "linear_1", "sensitivity": 0.9990},
        {"net": "encoder", "layer": "linear_2", "sensitivity": 0.9999}]}))
    app = WizardApp(show_timings=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(SummaryScreen(d))
        await pilot.pause()
        assert "█" in str(app.screen.query_one("#size-bars").render())
        assert "▓" in str(app.screen.query_one("#kind-bars").render())
        sens = str(app.screen.query_one("#sensitivity-bars").render()).splitlines()
        assert "linear_1" in sens[1] and "linear_2" in sens[2]  # most sensitive first


async def test_summary_draws_where_int8_clips_when_calibration_kept_histograms(tmp_path):
    from core.int8.histograms import HISTOGRAMS
    d = out_dir(tmp_path)
    counts = [1000.0 / (i + 1) for i in range(64)]
    (d / HISTOGRAMS).write_text(json.dumps({"buckets": 64, "layers": [
        {"net": "encoder", "layer": "conv_25", "absmax": 23.6, "threshold": 23.6, "clipped": 0.0,
         "clipped_by_kl": 0.137, "counts": counts},
        {"net": "joiner", "layer": "linear_3", "absmax": 9.8, "threshold": 3.21, "clipped": 0.004,
         "clipped_by_kl": 0.0, "counts": counts}]}))
    assert "histograms" in logic.summary_charts(d)
    app = WizardApp(show_timings=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(SummaryScreen(d))
        await pilot.pause()
        shown = str(app.screen.query_one("#clip-histograms").render()).splitlines()
        assert shown[0].strip() == "encoder conv_25" and "KL's would clip 13.7%" in shown[3]
        assert shown[4].strip() == "joiner linear_3" and shown[6].index("▲") - 2 == 20
        assert "threshold 3.21 of absmax 9.80 (clips 0.4%)" in shown[7]
        assert "Where int8 clips" in [str(label.render()) for label in app.screen.query(".section")]
    (d / HISTOGRAMS).unlink()  # an fp16 run, or an external table: no section
    assert logic.summary_charts(d)["histograms"] == []
