"""core.validation.batched: every validation wav's encoder pass in one traced call per chunk step, or a refusal;
core.validation.rebatch: a trace with a literal batch of one (icefall's is_pnnx reshape) made to take several.

A small streaming encoder traced with torch.jit.trace stands in for icefall's (a state carried from chunk to chunk,
icefall's (layers, batch, dim) state layout); one traced with its batch size fixed must be refused, never mixed.
The real icefall LSTM of the kit and the demo stand-in: tests/core/validation/test_agreement.py.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # torch


class Encoder:
    """What core.model.traced.Traced offers the batched pass: zero inputs, the lengths input, the states, a call."""

    def __init__(self, module, dim=8, layers=2):
        import torch
        self.module, self.dim, self.layers = module, dim, layers
        self.shapes = [(1, 5, 4), (1,), (layers, 1, dim)]
        self.torch = torch

    def zeros(self):
        return [self.torch.zeros(s) if i != 1 else self.torch.zeros(s, dtype=self.torch.int64)
                for i, s in enumerate(self.shapes)]

    def lengths_index(self):
        return 1

    def state_indices(self):
        return [2]

    def __call__(self, flat):
        with self.torch.no_grad():
            return list(self.module(*flat))


def _net(kind: str):
    """A streaming encoder (x, lengths, state) traced on a batch of one. ``kind``: "plain"; "fixed" gives every row
    the first wav's numbers (its batch size fixed); "pnnx" reshapes the features with a literal 1 as icefall's
    is_pnnx front end does (several wavs would be merged into time); "weight" reshapes a weight with a literal 1
    (no batch there)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp = torch.nn.Linear(4, 8)
            self.mix = torch.nn.Linear(8, 8)

        def forward(self, x, lengths, state):
            if kind == "pnnx":
                x = x.reshape(1, -1, 4)
            h = self.inp(x).mean(dim=1)  # (batch, 8)
            if kind == "fixed":
                h = h.reshape(1, -1)[:, :8].expand(x.shape[0], 8)
            if kind == "weight":
                h = h * self.mix.weight.reshape(1, -1)[:, :8]  # 1 x 8 whatever the batch
            new = torch.tanh(self.mix(h).unsqueeze(0) + state)  # (layers, batch, 8)
            return new[-1].unsqueeze(1), lengths, new

    args = (torch.zeros(1, 5, 4), torch.full((1,), 5, dtype=torch.int64), torch.zeros(2, 1, 8))
    return torch.jit.trace(Net(), args, check_trace=False)


def _traced(fixed_batch: bool):
    return _net("fixed" if fixed_batch else "plain")


def _features(n):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((t, 4)).astype(np.float32) for t in (23, 11, 30)[:n]]


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


def test_the_batched_pass_gives_each_wav_its_own_stream():
    from core.validation.batched import encode_streams
    enc, feats = Encoder(_traced(False)), _features(3)
    batched = encode_streams(enc, 5, 3, feats)
    plain = _one_at_a_time(enc, feats)
    assert [len(c) for c in batched] == [len(c) for c in plain] == [6, 2, 9]  # wavs of different lengths
    for b, p in zip(batched, plain):
        for x, y in zip(b, p):
            assert x.shape == y.shape and float((x - y).abs().max()) < 1e-5


def test_an_encoder_traced_with_its_batch_fixed_is_refused():
    from core.validation.batched import NotBatchable, encode_streams
    with pytest.raises(NotBatchable, match="differs from the one-wav call"):
        encode_streams(Encoder(_traced(True)), 5, 3, _features(3))


def test_batching_is_tried_only_where_reading_the_weights_dominates():
    """Geometries as sherpa-ncnn computes them from each architecture's metadata: the LSTM advances 4 frames per
    call (batching 5 wavs: icefall's published LSTM 7.8 s -> 3.2 s of torch), the ConvEmformer 16 and the
    Zipformer 32 (no gain, or no batching at all)."""
    from core.validation.agreement import stream_geometry
    from core.validation.batched import worth_batching
    assert worth_batching(stream_geometry("lstm", {0: 3, 1: 2, 2: 128, 3: 256})[1])
    assert not worth_batching(stream_geometry("conv-emformer", {0: 1, 1: 3, 2: 16, 3: 15, 4: 16, 5: 16, 6: 4,
                                                                 7: 96})[1])
    assert not worth_batching(stream_geometry("zipformer", {0: 2, 1: 32, 2: 4, 3: 7})[1])


def test_a_state_whose_batch_axis_cannot_be_told_is_refused_before_any_call():
    """A one-layer state (1, 1, dim) has two axes of size 1; guessing wrong crashed torch's traced LSTM (a double free
    on a real one-layer icefall LSTM), so the batched pass refuses before calling the module."""
    from core.validation.batched import NotBatchable, encode_streams
    calls = []

    class OneLayer(Encoder):
        def __call__(self, flat):
            calls.append(flat)
            return super().__call__(flat)

    enc = OneLayer(_traced(False), layers=1)
    with pytest.raises(NotBatchable, match="more than one axis of size 1"):
        encode_streams(enc, 5, 3, _features(3))
    assert calls == []


# -- core.validation.rebatch: saved traces, loaded through core.model.traced as icefall's are -----------------

def _saved(tmp_path, kind: str):
    """``_net(kind)`` saved and loaded through core.model.traced, as icefall's traces are."""
    path = tmp_path / f"{kind}.pt"
    _net(kind).save(str(path))
    from core.model.traced import load
    return load(path)


def test_a_literal_batch_of_one_is_made_the_features_batch(tmp_path):
    from core.validation.batched import NotBatchable, encode_streams
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "pnnx")
    with pytest.raises(NotBatchable):  # as traced: the streams would be merged into one
        encode_streams(enc, 5, 3, _features(3))
    patched = rebatched(enc)
    assert patched is not enc and patched.module is not enc.module
    batched = encode_streams(enc, 5, 3, _features(3), patched)
    plain = _one_at_a_time(enc, _features(3))
    assert [len(c) for c in batched] == [len(c) for c in plain] == [6, 2, 9]
    for b, p in zip(batched, plain):
        for x, y in zip(b, p):
            assert x.shape == y.shape and float((x - y).abs().max()) < 1e-6


def test_with_one_stream_the_patched_graph_is_the_module(tmp_path):
    import torch
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "pnnx")
    inputs = enc.zeros()
    inputs[0] = torch.from_numpy(_features(3)[0][:5]).unsqueeze(0)
    assert all(torch.equal(a, b) for a, b in zip(rebatched(enc)(inputs), enc(inputs)))


def test_a_literal_one_that_is_not_the_batch_is_refused_by_the_check(tmp_path):
    from core.validation.batched import NotBatchable, encode_streams
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "weight")
    patched = rebatched(enc)
    assert patched is not enc  # patched (it cannot know), so the batched pass must catch it
    with pytest.raises(NotBatchable):
        encode_streams(enc, 5, 3, _features(2), patched)


def test_nothing_to_patch_gives_the_encoder_itself(tmp_path):
    from core.validation.rebatch import rebatched
    enc = _saved(tmp_path, "plain")
    assert rebatched(enc) is enc
