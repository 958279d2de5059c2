"""core.validation.agreement: sherpa-ncnn's tokens against the traced torch modules decoded the way sherpa-ncnn streams.

Fast tests pin the comparison rules; slow tests run the real thing: the real icefall LSTM of the kit through
``run --from-ncnn`` (with the tool's rewrite, then sherpa-ncnn in its child process), and a demo run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.validation.agreement import AgreementError, _follow, compare_tokens, describe, edit_distance, stream_geometry
from tests.paths import KIT, REPO

WAVS = sorted((REPO / "assets" / "demo" / "test_wavs").glob("*.wav"))
WIZARD = [sys.executable, "-m", "tui.cli.main"]


def test_stream_geometry_is_read_from_the_metadata_like_sherpa_ncnn():
    assert stream_geometry("zipformer", {0: 2, 1: 32, 2: 4, 3: 7}) == (39, 32)
    assert stream_geometry("zipformer", {0: 2, 1: 16, 2: 4, 3: 7}) == (23, 16)
    assert stream_geometry("conv-emformer", {0: 1, 1: 3, 2: 16, 3: 15, 4: 16, 5: 16, 6: 4, 7: 96}) == (31, 16)
    assert stream_geometry("lstm", {0: 3, 1: 2, 2: 128, 3: 256}) == (9, 4)
    with pytest.raises(AgreementError, match="never advance"):
        stream_geometry("zipformer", {0: 2, 3: 7})  # key 1 missing reads as 0 in sherpa-ncnn


def test_compare_tokens_match_divergence_and_rate():
    same = compare_tokens([5, 6, 7], [5, 6, 7], [0, 3, 9], [0, 3, 9])
    assert same["match"] and same["first_divergence"] is None and same["rate"] == 1.0
    diff = compare_tokens([5, 6, 7, 8], [5, 9, 7, 8], [0, 3, 9, 12], [0, 4, 9, 12])
    assert not diff["match"] and diff["rate"] == 0.75
    assert diff["first_divergence"] == {"index": 1, "torch_token": 6, "sherpa_token": 9,
                                        "torch_frame": 3, "sherpa_frame": 4}
    shorter = compare_tokens([5, 6], [5])
    assert shorter["first_divergence"]["index"] == 1 and shorter["first_divergence"]["sherpa_token"] is None
    assert compare_tokens([], [])["rate"] == 1.0 and compare_tokens([], [4])["rate"] == 0.0
    assert edit_distance([1, 2, 3], [2, 3, 4]) == 2


def test_a_near_tie_is_followed_a_real_difference_is_not():
    logits = np.array([1.0, 0.2, 0.9995, 0.1, 0.5], dtype=np.float32)  # blank 0 barely above <unk> 2
    # sherpa-ncnn emitted token 4 where torch says blank: margin 0.5 > 1e-2 -> a divergence
    token, tie, div = _follow(logits, 0, 4, 1e-2, frame=7, index=3)
    assert token == 0 and tie is None and div["frame"] == 7 and div["sherpa_token"] == 4 and div["torch_token"] is None
    logits[4] = 0.995  # now within 1e-2 of the best: fp16 may flip it, torch follows sherpa-ncnn
    token, tie, div = _follow(logits, 0, 4, 1e-2, frame=7, index=3)
    assert token == 4 and div is None and tie["margin"] == pytest.approx(0.005, abs=1e-6)
    # both emit nothing (sherpa-ncnn treats <unk> 2 like blank): agreement
    assert _follow(logits, 2, None, 1e-2, frame=1, index=0) == (2, None, None)


def test_describe_says_what_diverged_where():
    entry = {"model": "fp16", "wav": "/x/a.wav", "torch_tokens": [5, 6], "sherpa_tokens": [5, 9], "near_ties": [],
             **compare_tokens([5, 6], [5, 9], [0, 3], [0, 3])}
    line = describe(entry)
    assert line.startswith("-[✗] agreement fp16 a.wav") and "token 1 (frame 3): torch 6, sherpa-ncnn 9" in line
    entry["model"] = "int8"
    assert describe(entry).startswith("-[i] agreement int8 a.wav: 50.0% of torch's tokens")


def _run(argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def kit_lstm(tmp_path_factory):
    folder = KIT / "lstm-2layer"
    if not (folder / "traced").is_dir():
        pytest.skip("the icefall kit is absent")
    out = tmp_path_factory.mktemp("kit-lstm") / "out"
    flags = (folder / "export-flags.txt").read_text().split()
    wavs = [a for w in WAVS for a in ("--wav", str(w))]
    proc = _run(WIZARD + ["run", "--from-ncnn", str(folder), "--arch", "lstm", *flags,
                          "--traced-dir", str(folder / "traced"), *wavs, "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_kit_lstm_from_ncnn_agrees_with_torch_token_for_token(kit_lstm):
    report = json.loads((kit_lstm / "validation.json").read_text())
    entries = report["agreement"]
    assert [Path(e["wav"]).name for e in entries] == [w.name for w in WAVS]
    assert all(e["model"] == "fp16" and e["match"] for e in entries), entries
    assert sum(len(e["torch_tokens"]) for e in entries) >= 10  # something was decoded
    for e in entries:
        assert e["sherpa_tokens"] == [t for t in report["decode"]["results"][entries.index(e)]["tokens"]]


@pytest.mark.slow
def test_wrong_metadata_is_caught_by_the_agreement(kit_lstm, tmp_path):
    """The issue's case: metadata that disagrees with the graph. sherpa-ncnn then feeds states of the wrong
    size; the torch side keeps the traced shapes (pnnx's graph), so the tokens cannot agree."""
    out = tmp_path / "out"
    shutil.copytree(kit_lstm, out)
    param = out / "encoder_jit_trace-pnnx.ncnn.param"
    text = param.read_text()
    assert " 2=128 3=256" in text
    param.write_text(text.replace(" 2=128 3=256", " 2=128 3=64"))  # rnn hidden size 256 -> 64
    folder = KIT / "lstm-2layer"
    proc = _run([sys.executable, "-m", "core.pipeline.from_ncnn", str(out), "--arch", "lstm", "--traced-dir",
                 str(folder / "traced"), "--wav", str(WAVS[-1]), "--json-out", str(out / "v.json")], timeout=300)
    assert proc.returncode == 1, proc.stdout
    report = json.loads((out / "v.json").read_text())
    assert not report["ok"]
    if report["decode"]["ok"]:  # sherpa-ncnn ran on the wrong states: the agreement must say so
        assert report["agreement"] and not report["agreement"][0]["match"], report["agreement"]
        assert f"agreement fp16 {WAVS[-1].name}: first divergence" in proc.stdout


@pytest.fixture(scope="module")
def lstm_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-lstm") / "out"
    proc = _run(WIZARD + ["run", "--demo", "lstm", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_demo_run_agreement_is_in_validation_json(lstm_demo):
    report = json.loads((lstm_demo / "validation.json").read_text())
    entries = report["agreement"]
    assert len(entries) == len(WAVS) and all(e["match"] for e in entries), entries
    for e in entries:
        assert set(e) >= {"model", "wav", "torch_tokens", "sherpa_tokens", "match", "first_divergence", "rate"}
        assert e["rate"] == 1.0 and e["first_divergence"] is None
    # the demo's 3-layer LSTM, traced as icefall's (a literal batch of one): torch streamed every wav per call
    assert report["torch_wavs_per_call"] == len(WAVS)


def _lstm_model(which: str, request):
    """The traced modules of the demo LSTM's run, or of the kit's real icefall LSTM (its run --from-ncnn)."""
    from core.validation.agreement import transducer
    if which == "demo":
        out = request.getfixturevalue("lstm_demo")
        return transducer(out, "lstm", out / "work" / "exp")
    return transducer(request.getfixturevalue("kit_lstm"), "lstm", KIT / "lstm-2layer" / "traced")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["demo", "kit"])
def test_the_demo_lstm_trace_batches_as_icefalls_does_not_at_all(which, request):
    """icefall's LSTM export (is_pnnx) bakes the batch of one into the front end's reshape, so its traced encoder
    as it is cannot run several streams in one call; the demo stand-in traces the same way (found at the published
    size: 10 s of torch for icefall's, 2.7 s batched for the stand-in that did batch)."""
    from core.validation.agreement import features_for
    from core.validation.batched import NotBatchable, encode_streams
    model = _lstm_model(which, request)
    feats = [features_for(str(w), 0.5) for w in WAVS[:2]]
    with pytest.raises(NotBatchable, match="differs from the one-wav call|do not keep the batch"):
        encode_streams(model.encoder, model.segment, model.offset, feats)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["demo", "kit"])
def test_the_lstm_trace_rebatched_streams_every_wav_at_once_with_one_wav_numbers(which, request):
    """core.validation.rebatch takes the literal batch of one out of a copy of the graph: icefall's trace (and the
    demo's) then streams all the wavs per call, each wav's frames those of its own one-stream decode."""
    from core.validation.agreement import features_for
    from core.validation.batched import encode_streams
    from core.validation.rebatch import rebatched
    model = _lstm_model(which, request)
    feats = [features_for(str(w), 0.5) for w in WAVS]
    batched = encode_streams(model.encoder, model.segment, model.offset, feats, rebatched(model.encoder))
    for f, chunks in zip(feats, batched):
        alone = model.encode(f)
        assert len(chunks) == len(alone) > 10
        assert max(float((a - b).abs().max()) for a, b in zip(chunks, alone)) < 1e-4
