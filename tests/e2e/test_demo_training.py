"""The demo models' training code (assets/demo/training): the RNN-T loss, the streaming forward, the data split.

Tests never train a model: they check the loss against a brute-force sum over
every alignment, that the batched streaming encoder computes what the traced
per-chunk step computes (so training sees what sherpa-ncnn runs), that a few
optimiser steps lower the loss, and that the committed test wavs are held out
(their sentences and voices are never in the training lists).
"""
from __future__ import annotations

import json
import sys

import pytest

from core.pipeline.demo import DEMO_ROOT

TRAINING = DEMO_ROOT / "training"
ARCHS = ("lstm", "conv-emformer", "zipformer")


@pytest.fixture(scope="module")
def training_modules():
    """rnnt_loss and train (the training script), imported from assets/demo/training."""
    import importlib.util
    for p in (str(TRAINING), str(DEMO_ROOT)):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec = importlib.util.spec_from_file_location("demo_train", TRAINING / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    import rnnt_loss
    return rnnt_loss, train


@pytest.mark.slow
def test_rnnt_loss_matches_brute_force(training_modules):
    import torch
    rnnt, _ = training_modules
    torch.manual_seed(0)
    n, t, u, v = 4, 5, 3, 6
    logits = torch.randn(n, t, u + 1, v, requires_grad=True)
    targets = torch.randint(1, v, (n, u))
    t_lens, u_lens = torch.tensor([5, 4, 2, 1]), torch.tensor([3, 1, 2, 0])
    losses = rnnt.rnnt_loss(logits, targets, t_lens, u_lens, reduction="none")
    grad, = torch.autograd.grad(losses.sum(), logits)
    for i in range(n):
        x = logits[i, :t_lens[i], :u_lens[i] + 1].detach().clone().requires_grad_()
        ref = rnnt.rnnt_loss_brute_force(x, targets[i, :u_lens[i]].tolist())
        ref_grad, = torch.autograd.grad(ref, x)
        assert abs(losses[i].item() - ref.item()) < 1e-4, (i, losses[i].item(), ref.item())
        assert torch.allclose(grad[i, :t_lens[i], :u_lens[i] + 1], ref_grad, atol=1e-5)
        # cells outside the utterance's lattice get no gradient
        assert float(grad[i].abs().sum() - ref_grad.abs().sum()) == pytest.approx(0.0, abs=1e-4)
    mean = rnnt.rnnt_loss(logits, targets, t_lens, u_lens)
    assert mean.item() == pytest.approx(losses.mean().item(), rel=1e-6)


def _model(train, arch):
    lang = DEMO_ROOT / "models" / arch / "data" / "lang_bpe_500"
    import sentencepiece as spm
    model = train.build_model(arch, train.read_flags(arch), lang / "tokens.txt", 1)
    return model, spm.SentencePieceProcessor(model_file=str(lang / "bpe.model"))


def _wav_features(train, n):
    from core.common.audio import read_wav
    items = sorted((DEMO_ROOT / "test_wavs").glob("*.wav"))[:n]
    return [train.features_tensor(read_wav(w).samples) for w in items]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_batched_streaming_encoder_is_the_traced_step(training_modules, arch):
    """encode() (vmap / unfolded chunks) == the traced step called chunk by chunk with carried states."""
    import torch
    _, train = training_modules
    model, _ = _model(train, arch)
    model.eval()
    enc = model.encoder
    feats = [f[:200] for f in _wav_features(train, 2)]
    frames = max(f.shape[0] for f in feats)
    pad = torch.stack([torch.nn.functional.pad(f, (0, 0, 0, frames - f.shape[0])) for f in feats])
    nchunks = torch.tensor([train.chunks_for(arch, enc, f.shape[0]) for f in feats])
    segment, offset = train.geometry(arch, enc)
    with torch.no_grad():
        out, lens = train.encode(arch, enc, pad, nchunks)
        for i, f in enumerate(feats):
            states = train.init_states(arch, enc)
            got = []
            for k in range(int(nchunks[i])):
                x = f[k * offset:k * offset + segment].unsqueeze(0)
                if arch == "lstm":  # what sherpa-ncnn runs: forward(x, x_lens, (h, c))
                    o, _, (h, c) = enc(x, torch.tensor([segment]), tuple(states))
                    states = [h, c]
                else:
                    o, *states = train.step_fn(arch, enc)(x, *states)
                got.append(o[0])
            ref = torch.cat(got)
            assert int(lens[i]) == ref.shape[0]
            assert torch.allclose(out[i, :ref.shape[0]], ref, atol=1e-4), float((out[i, :ref.shape[0]] - ref).abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_training_steps_lower_the_loss(training_modules, arch):
    import torch
    _, train = training_modules
    torch.manual_seed(0)
    model, sp = _model(train, arch)  # random weights (seed 1), the demo's flags and tokens
    feats = [f[:160] for f in _wav_features(train, 2)]  # 1.6 s each: a few chunks, so the states are carried
    texts = [t.split(" ", 1)[1] for t in (DEMO_ROOT / "test_wavs" / "transcripts.txt").read_text().splitlines()[:2]]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = train.batch_loss(arch, model, feats, texts, sp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.95, losses


def test_training_is_reproducible(training_modules):
    """Same seed, same data, same steps: the same weights, to the bit (what lets the training command reproduce
    the committed checkpoints)."""
    import torch
    _, train = training_modules
    feats = [f[:160] for f in _wav_features(train, 2)]
    texts = [t.split(" ", 1)[1] for t in (DEMO_ROOT / "test_wavs" / "transcripts.txt").read_text().splitlines()[:2]]
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model, sp = _model(train, "conv-emformer")
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(2):
            loss = train.batch_loss("conv-emformer", model, feats, texts, sp)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_committed_wavs_are_held_out():
    split = json.loads((TRAINING / "split.json").read_text())
    committed = json.loads((TRAINING / "committed.json").read_text())
    train_sentences, train_voices = set(split["train_sentences"]), set(split["train_voices"])
    assert not train_sentences & set(split["heldout_sentences"])
    assert not train_voices & set(split["heldout_voices"])
    lines = (DEMO_ROOT / "test_wavs" / "transcripts.txt").read_text().splitlines()
    transcripts = dict(line.split(" ", 1) for line in lines)
    assert sorted(transcripts) == sorted(p.name for p in (DEMO_ROOT / "test_wavs").glob("*.wav"))
    assert len(transcripts) >= 3
    heldout = {}
    for trans in (DEMO_ROOT / "heldout").rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            assert (trans.parent / f"{utt}.wav").is_file()
            heldout[str((trans.parent / f"{utt}.wav").relative_to(DEMO_ROOT))] = text
    assert len(heldout) >= 20
    for rel, text in [(f"test_wavs/{k}", v) for k, v in transcripts.items()] + list(heldout.items()):
        assert committed[rel]["text"] == text, rel
        assert text in split["heldout_sentences"] and text not in train_sentences, rel
        assert committed[rel]["voice"] in split["heldout_voices"], rel
        assert set(text.split()) <= set(split["words"]), rel
    for rel, info in committed.items():  # calibration wavs: training voices, but sentences never trained on
        if rel.startswith("calibration_wavs/"):
            assert (DEMO_ROOT / rel).is_file() and info["text"] not in train_sentences


def test_split_is_reproducible():
    sys.path.insert(0, str(TRAINING))
    try:
        import make_speech
    finally:
        sys.path.remove(str(TRAINING))
    assert make_speech.split() == json.loads((TRAINING / "split.json").read_text())
