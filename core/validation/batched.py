"""The agreement check's encoder pass over every validation wav at once: one traced-encoder call per chunk step.

Streaming feeds one chunk at a time, so a published-size encoder is bound by reading its weights (the LSTM's 230 MB
per call for one output frame): the wavs' streams, batched, read them once per step for all. A traced module may
not batch (a size fixed at trace time: icefall's is_pnnx exports; core.validation.rebatch makes a copy of the graph
that may), so each new batch size is first checked against the plain one-wav call (every output, states included);
any difference and the caller decodes one wav at a time as before.
"""
from __future__ import annotations

TOLERANCE = 1e-4  # x max(1, |output|max): float rounding between batch sizes, nothing more


class NotBatchable(Exception):
    """The traced encoder does not give one wav's numbers when called with several."""


def _batch_axis(shape) -> int:
    """A state's batch axis: its only axis of size 1 (traced with one wav). With two (a one-layer LSTM's (1, 1, dim))
    there is no telling, and guessing is not safe: torch's traced LSTM does not check its states' batch against the
    input's, and a wrong one corrupts the process's memory (found on a real one-layer icefall LSTM)."""
    ones = [axis for axis, size in enumerate(shape) if size == 1]
    if len(ones) != 1:
        raise NotBatchable(f"{'no' if not ones else 'more than one'} axis of size 1 in {tuple(shape)}: no telling "
                           "which is the batch")
    return ones[0]


MAX_OFFSET = 8  # feature frames advanced per call up to which batching pays (measured at the published sizes below)


def worth_batching(offset: int) -> bool:
    """Whether streaming several wavs per call saves time: a call that advances a few frames (the LSTM: 4) is
    bound by reading the weights, which one call for all the wavs reads once (icefall's published LSTM, the 5 test
    wavs: 7.8 s -> 3.2 s of torch); a big chunk per call (ConvEmformer 16, Zipformer 32) is bound by arithmetic,
    which batching does not shrink (ConvEmformer: 1.7 s one wav at a time, 1.8 s batched; the Zipformer trace
    cannot batch at all)."""
    return offset <= MAX_OFFSET


def encode_streams(encoder, segment: int, offset: int, features: list, batched=None) -> list[list]:
    """Per wav, the encoder's output frames per chunk ((frames, dim) each), exactly as one-wav streaming gives
    them (``TorchTransducer.encode``); raises NotBatchable when the batched call cannot stand for it.
    ``batched``: what makes the several-wav calls (core.validation.rebatch's patched graph), when not the encoder
    itself; the one-wav calls it is checked against are always the encoder's."""
    try:
        return _encode_streams(encoder, segment, offset, features, batched or encoder)
    except NotBatchable:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unexpected here: the one-wav pass decides and reports
        raise NotBatchable(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _encode_streams(encoder, segment: int, offset: int, features: list, batched) -> list[list]:
    import numpy as np
    import torch
    zeros = encoder.zeros()
    lengths = encoder.lengths_index()
    states = encoder.state_indices()
    axes = {k: 0 if k in (0, lengths) else _batch_axis(z.shape) for k, z in enumerate(zeros)}
    feats = [torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)) for f in features]
    carried = [[z.clone() for z in zeros] for _ in feats]  # each wav's inputs (its states), batch of one
    encoded: list[list] = [[] for _ in feats]
    checked: set[int] = set()
    step = 0
    while True:
        start = step * offset
        active = [i for i, f in enumerate(feats) if start + segment < f.shape[0]]  # sherpa-ncnn's IsReady
        if not active:
            return encoded
        for i in active:
            carried[i][0] = feats[i][start: start + segment].unsqueeze(0)
            if lengths is not None:
                carried[i][lengths] = torch.full(tuple(zeros[lengths].shape), segment, dtype=zeros[lengths].dtype)
        batch = [torch.cat([carried[i][k] for i in active], dim=axes[k]) for k in range(len(zeros))]
        outs = batched(batch)  # a size fixed at trace time fails here: not batchable
        if any(k >= len(outs) or outs[k].shape[axes[k]] != len(active) for k in states) or \
                outs[0].shape[0] != len(active):
            raise NotBatchable("the outputs do not keep the batch")
        rows = {k: torch.split(outs[k], 1, dim=axes[k]) for k in [0, *states]}
        if len(active) not in checked:  # the first call at this batch size: its first and last wav vs the plain call
            for j in {0, len(active) - 1}:
                alone = encoder(carried[active[j]])
                for k in [0, *states]:
                    scale = max(1.0, float(alone[k].abs().max()))
                    if tuple(alone[k].shape) != tuple(rows[k][j].shape) or \
                            float((alone[k] - rows[k][j]).abs().max()) > TOLERANCE * scale:
                        raise NotBatchable(f"output out{k} differs from the one-wav call")
            checked.add(len(active))
        for j, i in enumerate(active):
            out0 = rows[0][j]
            encoded[i].append(out0.reshape(-1, out0.shape[-1]))
            for k in states:
                carried[i][k] = rows[k][j]
        step += 1
