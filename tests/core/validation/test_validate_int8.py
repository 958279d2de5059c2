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
