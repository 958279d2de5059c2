"""The int8 half of validation on its own: torch's decodes from the fp16 half's report, the cosine split over
children and merged."""
from pathlib import Path

from core.int8.check import Similarity
from core.validation import agreement
from core.validation.validate_int8 import cosine_parts, merge_similarities


def test_cosine_parts_share_the_wavs_out_and_keep_every_one():
    wavs = [Path(f"{i}.wav") for i in range(5)]
    parts = cosine_parts(wavs, jobs=2)
    assert len(parts) == 3 and sorted(w for p in parts for w in p) == wavs
    assert cosine_parts(wavs, jobs=1) == [wavs]  # one lane: one child, as before
    assert cosine_parts([], jobs=2) == []


def test_merged_similarity_is_the_worst_frame_and_the_sample_weighted_mean():
    a = [Similarity("encoder", "out0", 0.95, 0.99, 30), Similarity("joiner", "out0", 0.9, 0.98, 10)]
    b = [Similarity("encoder", "out0", 0.97, 0.96, 10)]
    merged = {(s.net, s.output): s for s in merge_similarities([a, b])}
    enc = merged[("encoder", "out0")]
    assert enc.min_cosine == 0.95 and enc.samples == 40 and abs(enc.mean_cosine - (0.99 * 30 + 0.96 * 10) / 40) < 1e-12
    assert merged[("joiner", "out0")] == a[1]


def test_the_int8_agreement_uses_the_fp16_halfs_torch_decodes_without_loading_torch(tmp_path, monkeypatch):
    traced = tmp_path / "exp"
    traced.mkdir()
    (traced / "encoder_jit_trace-pnnx.pt").write_bytes(b"not a module: loading it would fail the check")
    monkeypatch.setattr(agreement, "_TORCH_CACHE", {})
    agreement.use_torch_decodes(traced, {"a.wav": {"tokens": [5, 6, 7], "frames": [1, 4, 9]}, "bad": "x"})
    assert agreement.torch_decodes(traced) == {"a.wav": {"tokens": [5, 6, 7], "frames": [1, 4, 9]}}
    report = {"ok": True, "notes": []}
    decoded = {"ok": True, "model": "int8",
               "results": [{"wav": "a.wav", "tokens": [5, 8, 7], "timestamps": [0.04, 0.16, 0.36]}]}
    agreement.check_agreement(tmp_path, "lstm", traced, decoded, report, print_fn=lambda s: None)
    (entry,) = report["agreement"]
    assert "error" not in entry and entry["model"] == "int8" and not entry["match"]
    assert entry["first_divergence"]["index"] == 1 and abs(entry["rate"] - 2 / 3) < 1e-9
    assert report["ok"]  # int8 agreement is reported, not failed


def test_a_missing_fp16_report_is_a_sentence_and_a_failed_check(tmp_path, capsys):
    from core.validation.validate import main
    rc = main([str(tmp_path), "--fp16-report", str(tmp_path / "work" / "validation-fp16.json"), "--json-out",
               str(tmp_path / "validation.json")])
    out = capsys.readouterr().out
    assert rc == 1 and "validation-fp16.json: the fp16 validation's report is missing or unreadable" in out
    assert not (tmp_path / "validation.json").exists()


def test_the_two_halves_reports_are_joined_with_the_int8_agreement_added(tmp_path, monkeypatch, capsys):
    """validation-report: the int8 half's report (run beside the fp16 half, no torch) joined to the fp16 half's,
    the int8 tokens compared with the fp16 half's torch decodes; a failed half fails the whole."""
    import json

    from core.validation.validate import main
    traced = tmp_path / "exp"
    traced.mkdir()
    (traced / "encoder_jit_trace-pnnx.pt").write_bytes(b"not a module: loading it would fail the check")
    monkeypatch.setattr(agreement, "_TORCH_CACHE", {})
    fp16 = {"ok": True, "notes": ["fp16 note"], "timings": {"torch streaming decode": 1.0}, "numeric": [],
            "decode": {"ok": True}, "torch_decodes": {"a.wav": {"tokens": [5, 6, 7], "frames": [1, 4, 9]}}}
    int8 = {"ok": True, "notes": ["int8 note"], "timings": {"sherpa-ncnn int8 decode": 0.5}, "numeric": [],
            "decode": None, "int8_similarity": [{"net": "encoder", "output": "out0", "min_cosine": 0.9,
                                                 "mean_cosine": 0.99, "samples": 3, "audio": "x"}],
            "decode_int8": {"ok": True, "model": "int8",
                            "results": [{"wav": "a.wav", "tokens": [5, 6, 7], "timestamps": [0.04, 0.16, 0.36]}]}}
    paths = {k: tmp_path / f"{k}.json" for k in ("fp16", "int8")}
    for k, v in (("fp16", fp16), ("int8", int8)):
        paths[k].write_text(json.dumps(v))
    out = tmp_path / "validation.json"
    args = [str(tmp_path), "--arch", "lstm", "--traced-dir", str(traced), "--fp16-report", str(paths["fp16"]),
            "--int8-report", str(paths["int8"]), "--json-out", str(out)]
    assert main(args) == 0
    joined = json.loads(out.read_text())
    assert joined["decode"] == {"ok": True} and joined["decode_int8"] == int8["decode_int8"]
    assert joined["int8_similarity"] == int8["int8_similarity"] and joined["notes"] == ["fp16 note", "int8 note"]
    assert set(joined["timings"]) == {"torch streaming decode", "sherpa-ncnn int8 decode", "agreement int8 (compare)"}
    (entry,) = joined["agreement"]
    assert entry["model"] == "int8" and entry["match"]
    paths["int8"].write_text(json.dumps({**int8, "ok": False}))
    assert main(args) == 1 and not json.loads(out.read_text())["ok"]
    paths["int8"].unlink()
    out.unlink()
    assert main(args) == 1 and not out.exists()
    assert "int8.json: the int8 validation's report is missing or unreadable; run the validate-int8 step" in \
        capsys.readouterr().out

