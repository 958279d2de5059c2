"""core.validation.rebatch: a traced encoder with a literal batch of one (icefall's is_pnnx reshape) streams several
wavs per call, computing exactly the one-wav numbers, or is refused by core.validation.batched's check.

Small modules traced and saved as icefall's are (then loaded through core.model.traced), plus the real icefall LSTM
of the kit and the demo stand-in in tests/core/validation/test_agreement.py.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # torch


def _saved(tmp_path, kind: str):
    """A streaming encoder (x, lengths, state) traced on a batch of one and saved; ``kind``: "pnnx" reshapes the
    features with a literal 1 as icefall's is_pnnx front end does, "weight" reshapes a weight with a literal 1 (no
    batch there), "plain" has no such reshape."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp = torch.nn.Linear(4, 8)
            self.mix = torch.nn.Linear(8, 8)

        def forward(self, x, lengths, state):
            if kind == "pnnx":
                x = x.reshape(1, -1, 4)  # a batch of more than one would be merged into time
            h = self.inp(x).mean(dim=1)  # (batch, 8)
            if kind == "weight":
                h = h * self.mix.weight.reshape(1, -1)[:, :8]  # 1 x 8 whatever the batch
            new = torch.tanh(self.mix(h).unsqueeze(0) + state)  # (layers, batch, 8)
            return new[-1].unsqueeze(1), lengths, new

    args = (torch.zeros(1, 5, 4), torch.full((1,), 5, dtype=torch.int64), torch.zeros(2, 1, 8))
    path = tmp_path / f"{kind}.pt"
    torch.jit.trace(Net(), args, check_trace=False).save(str(path))
    from core.model.traced import load
    return load(path)


def _features():
    rng = np.random.default_rng(1)
    return [rng.standard_normal((t, 4)).astype(np.float32) for t in (23, 11, 30)]


def _one_at_a_time(enc, feats, segment=5, offset=3):
    import torch
    result = []
    for f in feats:
        inputs, chunks, start = enc.zeros(), [], 0
        while start + segment < len(f):
            inputs[0] = torch.from_numpy(f[start:start + segment]).unsqueeze(0)
            outs = enc(inputs)
            inputs[2] = outs[2]
            chunks.append(outs[0].reshape(-1, outs[0].shape[-1]))
            start += offset
        result.append(chunks)
    return result


def test_a_literal_batch_of_one_is_made_the_features_batch(tmp_path):
    from core.validation.batched import NotBatchable, encode_streams
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "pnnx")
    with pytest.raises(NotBatchable):  # as traced: the streams would be merged into one
        encode_streams(enc, 5, 3, _features())
    patched = rebatched(enc)
    assert patched is not enc and patched.module is not enc.module
    batched = encode_streams(enc, 5, 3, _features(), patched)
    plain = _one_at_a_time(enc, _features())
    assert [len(c) for c in batched] == [len(c) for c in plain] == [6, 2, 9]
    for b, p in zip(batched, plain):
        for x, y in zip(b, p):
            assert x.shape == y.shape and float((x - y).abs().max()) < 1e-6


def test_with_one_stream_the_patched_graph_is_the_module(tmp_path):
    import torch
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "pnnx")
    inputs = enc.zeros()
    inputs[0] = torch.from_numpy(_features()[0][:5]).unsqueeze(0)
    assert all(torch.equal(a, b) for a, b in zip(rebatched(enc)(inputs), enc(inputs)))


def test_a_literal_one_that_is_not_the_batch_is_refused_by_the_check(tmp_path):
    from core.validation.batched import NotBatchable, encode_streams
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "weight")
    patched = rebatched(enc)
    assert patched is not enc  # patched (it cannot know), so the batched pass must catch it
    with pytest.raises(NotBatchable):
        encode_streams(enc, 5, 3, _features()[:2], patched)


def test_nothing_to_patch_gives_the_encoder_itself(tmp_path):
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "plain")
    assert rebatched(enc) is enc
