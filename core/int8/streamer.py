"""How sherpa-ncnn streams one file through an ncnn encoder, decoder and joiner, in one place (calibration, the
int8 check and its recorded reference, and the calibration benchmark's floor all stream through ``Streamer``)."""
from __future__ import annotations

import time

import numpy as np

from core.int8.calibrate import CalibrationError
from core.model.architectures import ArchSpec
from core.ncnn.net import as_mat

CONTEXT_SIZE = 2
BLANK_IDS = (0, 2)  # sherpa-ncnn treats <unk> (2) like blank


class Streamer:
    """How sherpa-ncnn streams one file, in one place: encoder chunks (Segment frames, advancing by Offset,
    states carried, zeros at the start, the partial tail dropped) and the greedy joiner per output frame
    (context 2; blank and <unk> emit nothing; the decoder re-run on every emitted token).

    Calibration, the int8 check and the benchmark's floor all use ``run``; they differ only in their hooks:
    ``on_chunk(chunk, states, encoder_out, mats)`` after each encoder forward (``states`` are the ones it was
    fed) and ``on_frame(frame, decoder_out, token, logits, mats)`` after each joiner forward. ``mats`` are
    the blobs named in ``enc_blobs`` / ``join_blobs``, taken during that forward.

    Every forward stays in ncnn's light mode (intermediate blobs released or overwritten in place as soon
    as they are consumed, as in the plain forward pass): the wanted blobs are extracted first, in the order
    their producing layers run (``_topological``), then the outputs. Each extract continues the same
    forward from the blobs still held (every blob has one consumer in ncnn, Split layers fan out), so
    nothing is computed twice, and an in-place layer clones a blob the caller still holds, so the values
    taken are the ones the layer read.
    """

    def __init__(self, encoder, decoder, joiner, arch: ArchSpec, meta: dict):
        self.encoder, self.decoder, self.joiner = encoder, decoder, joiner
        self.arch, self.meta = arch, meta
        self.segment, self.offset = arch.segment_offset(arch.values_from_metadata(meta))
        self.state_map = arch.state_map(len(arch.initial_states(meta)))

    def run(self, feats: np.ndarray, on_chunk=None, on_frame=None, enc_blobs: list[str] = (),
            join_blobs: list[str] = (), name: str = "the input") -> tuple[int, int, float]:
        """Stream ``feats``; return (chunks, frames, seconds inside the ncnn forward passes, hooks excluded)."""
        states = self.arch.initial_states(self.meta)
        context = [0] * CONTEXT_SIZE
        decoder_out = _run_decoder(self.decoder, context)
        chunks = frames = 0
        forward = 0.0
        processed = 0
        while processed + self.segment <= len(feats):
            chunk = np.ascontiguousarray(feats[processed: processed + self.segment])
            processed += self.offset
            t0 = time.perf_counter()
            ex = self.encoder.create_extractor()
            ex.input("in0", as_mat(chunk))
            for k, state in enumerate(states, start=1):
                ex.input(f"in{k}", as_mat(state))
            mats = [ex.extract(blob)[1] for blob in enc_blobs]
            ret, out0 = ex.extract("out0")
            if ret != 0:
                raise CalibrationError(f"the encoder failed on {name} (extract returned {ret})")
            encoder_out = np.array(out0)
            encoder_out = encoder_out.reshape(-1, encoder_out.shape[-1])
            new_states = list(states)
            for target, source in self.state_map:
                _, mat = ex.extract(f"out{source}")
                new_states[target - 1] = np.array(mat).reshape(states[target - 1].shape).astype(np.float32)
            forward += time.perf_counter() - t0
            if on_chunk is not None:
                on_chunk(chunk, states, encoder_out, mats)
            states = new_states
            chunks += 1
            for frame in encoder_out:
                frame = np.ascontiguousarray(frame, dtype=np.float32)
                t0 = time.perf_counter()
                jex = self.joiner.create_extractor()  # fresh per frame: each frame's blobs are its own
                jex.input("in0", as_mat(frame))
                jex.input("in1", as_mat(decoder_out))
                mats = [jex.extract(blob)[1] for blob in join_blobs]
                _, logits = jex.extract("out0")
                logits = np.asarray(logits)
                token = int(np.argmax(logits))
                forward += time.perf_counter() - t0
                if on_frame is not None:
                    on_frame(frame, decoder_out, token, logits, mats)
                if token not in BLANK_IDS:
                    context = context[1:] + [token]
                    t0 = time.perf_counter()
                    decoder_out = _run_decoder(self.decoder, context)
                    forward += time.perf_counter() - t0
                frames += 1
        return chunks, frames, forward


def _run_decoder(net, context: list[int]) -> np.ndarray:
    ids = np.array(context, dtype=np.int32)
    ex = net.create_extractor()
    ex.input("in0", as_mat(ids))
    _, out = ex.extract("out0")
    return np.ascontiguousarray(np.array(out).reshape(-1), dtype=np.float32)
