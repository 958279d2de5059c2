"""core.validation.report: the one reader of validation.json, and the summary the CLI and the wizard both show."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from core.validation.report import read_validation, summary_lines

FULL = {
    "ok": False, "notes": ["int8 joiner out0: mean cosine 0.9500 is below 0.99; try more calibration audio"],
    "numeric": [
        {"net": "encoder", "output": "out0", "note": "chunk 0", "shape": [8, 32], "max_abs": 1e-3, "tolerance": 2e-2,
         "ok": True},
        {"net": "joiner", "output": "out0", "shape": [1, 500], "max_abs": 0.5, "tolerance": 2e-2, "ok": False},
        {"net": "decoder", "error": "the ncnn child gave no result", "ok": False}],
    "decode": {"ok": True, "model": "fp16", "results": [{"wav": "/x/a.wav", "text": "HELLO", "wer": 0.5,
                                                         "reference": "HELLO WORLD"}]},
    "decode_int8": {"ok": True, "model": "int8", "results": [{"wav": "/x/a.wav", "text": "HELO"}]},
    "agreement": [{"model": "fp16", "wav": "/x/a.wav", "match": False, "rate": 0.5,
                   "first_divergence": {"index": 6, "torch_token": 3, "sherpa_token": 4}},
                  {"model": "int8", "wav": "/x/a.wav", "match": False, "rate": 0.9}],
    "int8_similarity": [{"net": "joiner", "output": "out0", "mean_cosine": 0.95, "min_cosine": 0.9, "samples": 4}],
}


def _cli_text(out_dir) -> str:
    from tui.cli.run import _print_results
    console = Console(record=True, width=200, soft_wrap=True)
    _print_results(console, out_dir, "failed")
    return console.export_text()


def test_full_report_is_typed(tmp_path):
    (tmp_path / "validation.json").write_text(json.dumps(FULL))
    r = read_validation(tmp_path)
    assert r.readable and r.passed is False and len(r.numeric) == 3
    assert r.numeric[2].max_abs is None and r.numeric[2].error == "the ncnn child gave no result"
    assert r.decode.results[0].wer == 0.5 and r.decode_int8.results[0].text == "HELO"
    assert [(a.model, a.match, a.first_index) for a in r.agreement] == [("fp16", False, 6), ("int8", False, None)]
    assert r.int8_cosine[0].mean == 0.95 and not r.int8_cosine[0].ok


def test_cli_and_wizard_show_the_same_checks(tmp_path):
    from tui.wizard import logic
    (tmp_path / "validation.json").write_text(json.dumps(FULL))
    lines = summary_lines(read_validation(tmp_path))
    assert [(line.status, line.text) for line in lines] == [
        ("ok", "encoder out0 chunk 0: max abs diff 1.0e-03 ≤ 2e-02"),
        ("failed", "joiner out0: max abs diff 5.0e-01 > 2e-02"),
        ("failed", "decoder: the ncnn child gave no result"),
        ("ok", "sherpa-ncnn (fp16) loaded the model and decoded 1 wav(s)"),
        ("ok", "sherpa-ncnn (int8) loaded the int8 model and decoded 1 wav(s)"),
        ("warning", "int8 joiner out0 vs fp32: cosine mean 0.9500 (worst 0.9000)"),
        ("failed", "agreement fp16 a.wav: torch and sherpa-ncnn differ from token 6 (agreement 50.0%)")]
    wizard = logic.read_results(tmp_path)
    assert wizard.checks == lines  # the same three states (a low int8 cosine is a warning in both)
    assert wizard.transcripts == [("a.wav", "HELLO", "HELO")]
    printed = _cli_text(tmp_path)
    for line in lines:
        if "loaded the" not in line.text:  # the CLI prints each transcript instead of the count
            assert line.text in printed
    assert "[!] int8 joiner out0 vs fp32" in printed and "[✗] joiner out0: max abs diff" in printed
    assert "[✓] sherpa-ncnn fp16: a.wav: 'HELLO'  WER 50.0%" in printed
    assert "[✓] sherpa-ncnn int8: a.wav: 'HELO'" in printed
    assert "note: int8 joiner out0: mean cosine 0.9500" in printed


def test_failed_decode_is_one_failed_line_in_both(tmp_path):
    from tui.wizard import logic
    (tmp_path / "validation.json").write_text(json.dumps({"ok": False, "numeric": [], "decode": {
        "ok": False, "model": "fp16", "error": "sherpa-ncnn crashed with a segmentation fault"}}))
    lines = summary_lines(read_validation(tmp_path), per_wav=True)
    assert [(x.status, x.text) for x in lines] == [("failed", "sherpa-ncnn: sherpa-ncnn crashed with a "
                                                               "segmentation fault")]
    wizard = logic.read_results(tmp_path)
    assert wizard.decode_error == "sherpa-ncnn crashed with a segmentation fault" and wizard.transcripts == []
    assert "[✗] sherpa-ncnn: sherpa-ncnn crashed" in _cli_text(tmp_path)


def test_missing_file_is_no_validation(tmp_path):
    from core.pipeline.model_card import _validation
    from tui.wizard import logic
    r = read_validation(tmp_path)
    assert not r.present and not r.problem and summary_lines(r) == []
    assert logic.read_results(tmp_path).checks == []
    assert _validation(r) == ["No validation was run."]
    assert "Traceback" not in _cli_text(tmp_path)


@pytest.mark.parametrize("content, said", [
    ('{"numeric": [{"net": "enc', "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"numeric": {"net": "encoder"}}', "numeric is a dict, not a list"),
    ('{"numeric": [{"output": "out0", "ok": true}]}', "numeric[0] has no net"),
    ('{"numeric": [{"net": "encoder", "max_abs": 0.1, "ok": true}]}', "numeric[0] has only one of max_abs"),
    ('{"decode": {"ok": true, "results": [{"wav": "a.wav"}]}}', "decode.results[0] has no text"),
    ('{"int8_similarity": [{"net": "j", "output": "o", "mean_cosine": "high", "min_cosine": 1}]}',
     "int8_similarity[0].mean_cosine is 'high', not a number"),
])
def test_corrupt_or_partial_file_is_one_clear_sentence(tmp_path, content, said):
    from core.pipeline.model_card import _validation
    from tui.wizard import logic
    path = tmp_path / "validation.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = read_validation(tmp_path)
    assert r.present and not r.readable and said in r.problem and str(path) in r.problem
    assert "run validation again" in r.problem
    assert [(x.status, x.text) for x in summary_lines(r)] == [("failed", r.problem)]
    assert [(x.status, x.text) for x in logic.read_results(tmp_path).checks] == [("failed", r.problem)]
    printed = _cli_text(tmp_path)
    assert said in printed and "Traceback" not in printed
    assert _validation(r) == ["validation.json could not be read (run validation again)."]


def test_model_card_validation_section_reads_the_typed_report(tmp_path):
    from core.pipeline.model_card import _validation
    (tmp_path / "validation.json").write_text(json.dumps(FULL))
    assert _validation(read_validation(tmp_path)) == [
        "- torch vs ncnn: 3 comparisons, SOME FAILED (worst: joiner out0: max abs diff 5.00e-01, tolerance 2e-02)",
        "- torch vs sherpa-ncnn fp16 tokens: 0/1 decodes identical",
        "- torch vs sherpa-ncnn int8 tokens: 0/1 decodes identical (int8 is expected to differ a little)",
        "- sherpa-ncnn fp16: `a.wav` -> 'HELLO' (WER 50.0% vs 'HELLO WORLD')",
        "- sherpa-ncnn int8: `a.wav` -> 'HELO'",
        "- int8 vs fp32 joiner out0: cosine mean 0.9500, worst 0.9000"]


def test_raw_is_the_file_as_written(tmp_path):
    """summary.json and `validate --json` embed the file as it is; an unreadable one has no raw."""
    (tmp_path / "validation.json").write_text(json.dumps(FULL))
    assert read_validation(tmp_path).raw == FULL
    (tmp_path / "validation.json").write_text("{")
    assert read_validation(tmp_path).raw is None
