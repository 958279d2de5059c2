"""Read WAV files the way sherpa-ncnn's wave reader accepts them, and compute its features.

PCM 8/16/24/32-bit and 32-bit float are read (first channel only, like
sherpa-ncnn); anything else is an AudioError that names the file. Features
are kaldi-native-fbank with sherpa-ncnn's settings (16 kHz, 80 bins,
dither 0, snip_edges false, high_freq -400).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FEATURE_DIM = 80


class AudioError(Exception):
    """The file is not audio sherpa-ncnn can read; the message says which file and why."""


@dataclass
class Wave:
    samples: np.ndarray  # float32 in [-1, 1], first channel
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


def read_wav(path: str | Path) -> Wave:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudioError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a RIFF/WAVE file")
    fmt = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise AudioError(f"{path}: truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag is in the GUID
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise AudioError(f"{path}: data chunk before the fmt chunk")
            return Wave(_decode(path, body, *fmt), fmt[2], fmt[1])
        pos += 8 + size + (size & 1)
    raise AudioError(f"{path}: no audio data chunk")


def _decode(path: Path, body: bytes, tag: int, channels: int, rate: int, bits: int) -> np.ndarray:
    if channels < 1:
        raise AudioError(f"{path}: {channels} channels")
    if tag == 1 and bits in (8, 16, 32):
        dtype = {8: np.uint8, 16: "<i2", 32: "<i4"}[bits]
        x = np.frombuffer(body[: len(body) - len(body) % (bits // 8 * channels)], dtype=dtype)
        x = x.reshape(-1, channels)[:, 0].astype(np.float32)
        if bits == 8:
            return (x - 128.0) / 128.0
        return x / float(2 ** (bits - 1))
    if tag == 1 and bits == 24:
        raw = np.frombuffer(body[: len(body) - len(body) % (3 * channels)], dtype=np.uint8).reshape(-1, channels, 3)
        v = (raw[:, 0, 0].astype(np.int32) | (raw[:, 0, 1].astype(np.int32) << 8) | (raw[:, 0, 2].astype(np.int32) << 16))
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    if tag == 3 and bits == 32:
        x = np.frombuffer(body[: len(body) - len(body) % (4 * channels)], dtype="<f4")
        return x.reshape(-1, channels)[:, 0].astype(np.float32)
    raise AudioError(f"{path}: unsupported WAV encoding (format tag {tag}, {bits} bits); use 16-bit PCM or 32-bit float")


def fbank(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(frames, 80) float32 features, exactly as sherpa-ncnn computes them."""
    import kaldi_native_fbank as knf
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.dither = 0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = FEATURE_DIM
    opts.mel_opts.high_freq = -400
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(sample_rate, samples.astype(np.float32))
    fb.input_finished()
    if fb.num_frames_ready == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)]).astype(np.float32)


def wav_problem(path: str | Path, purpose: str) -> str | None:
    """Why ``path`` cannot be used for ``purpose`` by a 16 kHz sherpa-ncnn model, or None (reads the whole file)."""
    try:
        wave = read_wav(path)
    except AudioError as exc:
        return str(exc)
    if wave.sample_rate != SAMPLE_RATE:
        return (f"{path}: {wave.sample_rate} Hz; sherpa-ncnn models expect {SAMPLE_RATE} Hz, so {purpose} cannot use "
                f"it: resample it (e.g. sox IN.wav -r {SAMPLE_RATE} OUT.wav) or leave it out")
    if len(wave.samples) == 0:
        return f"{path}: no samples (an empty data chunk)"
    return None
