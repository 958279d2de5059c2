"""The int8 check's fp32 half as it is recorded: each encoder chunk's input, states and fp32 output, each joiner
frame's inputs and fp32 logits (``Recorder``: Streamer.run's hooks), saved as one .npz that core.int8.check_reference
feeds the int8 nets. The built-in calibration records its first file's first REFERENCE_SECONDS on the way."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REFERENCE_SECONDS = 5.0  # of calibration audio: enough chunks and frames for a stable cosine, a bounded int8 pass
FRAMES_PER_SECOND = 100  # feature frames (10 ms shift)


class Recorder:
    """``on_chunk``/``on_frame`` hooks for Streamer.run that keep each chunk's and frame's inputs and fp32 outputs,
    for at most ``max_chunks`` chunks (and the frames of those chunks)."""

    def __init__(self, max_chunks: int | None = None, offset: int = 0):
        self.max_chunks, self.full, self.finished = max_chunks, False, False
        self.offset = offset  # feature frames each chunk advances (0: not known, no ``seconds``)
        self.chunks: list[np.ndarray] = []
        self.states: list[list[np.ndarray]] = []
        self.enc_out: list[np.ndarray] = []
        self.frames: list[np.ndarray] = []
        self.dec_out: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []

    @classmethod
    def for_seconds(cls, seconds: float, offset: int) -> "Recorder":
        """A recorder of the chunks that cover ``seconds`` of audio when each advances ``offset`` feature frames."""
        return cls(max(1, round(seconds * FRAMES_PER_SECOND / max(1, offset))), offset)

    @property
    def seconds(self) -> float:
        """The audio the recorded chunks cover."""
        return len(self.chunks) * self.offset / FRAMES_PER_SECOND

    def on_chunk(self, chunk, chunk_states, encoder_out, mats=()) -> None:
        if self.full or (self.max_chunks is not None and len(self.chunks) >= self.max_chunks):
            self.full = True
            return
        self.chunks.append(np.array(chunk, dtype=np.float32))
        self.states.append([np.array(s, dtype=np.float32) for s in chunk_states])
        self.enc_out.append(np.array(encoder_out, dtype=np.float32))

    def on_frame(self, frame, decoder_out, token, logits, mats=()) -> None:
        if self.full:
            return
        self.frames.append(np.array(frame, dtype=np.float32))
        self.dec_out.append(np.array(decoder_out, dtype=np.float32))
        self.logits.append(np.array(logits, dtype=np.float32))

    def save(self, npz: Path, audio: str) -> None:
        """Write the record (replaced atomically: a half-written record is never read); ``audio`` says what was
        streamed (the int8 check's lines name it)."""
        if not self.chunks or not self.frames:  # too short for one encoder chunk: nothing to compare (said so)
            arrays = {"empty": np.zeros(0, dtype=np.float32)}
        else:
            arrays = {"chunk": np.stack(self.chunks), "encoder_out": np.stack(self.enc_out),
                      "frame": np.stack(self.frames), "decoder_out": np.stack(self.dec_out),
                      "logits": np.stack(self.logits)}
            for k in range(len(self.states[0])):
                arrays[f"state{k + 1}"] = np.stack([s[k] for s in self.states])
        arrays["audio"] = np.array(audio)
        tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, npz)
