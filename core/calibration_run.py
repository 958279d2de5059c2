"""Run the fp32 model over calibration audio the way sherpa-ncnn streams it, and build the scale tables.

The encoder is fed Segment frames at a time, advancing by Offset, with its
states carried from chunk to chunk (zeros at the start of every file); the
joiner runs per output frame of a greedy search (context 2, blank 0, token 2
skipped, as sherpa-ncnn does), each frame with a fresh extractor so each
frame's statistics really are that frame's. The inputs of every quantizable
layer of the encoder and the joiner feed core.calibrate's statistics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .architectures import BY_MODEL_TYPE, ArchSpec
from .audio import SAMPLE_RATE, AudioError, fbank, read_wav
from .calibrate import (QUANTIZABLE, BlobStats, CalibrationError, ScaleTable, activation_scale,
                        weight_scales)
from .metadata import read_metadata
from .ncnn_param import load_param

CONTEXT_SIZE = 2
BLANK_IDS = (0, 2)  # sherpa-ncnn treats <unk> (2) like blank


@dataclass
class ModelFiles:
    encoder_param: Path
    encoder_bin: Path
    decoder_param: Path
    decoder_bin: Path
    joiner_param: Path
    joiner_bin: Path


@dataclass
class WavCheck:
    usable: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one sentence per file that will not be used


@dataclass
class CalibrationResult:
    encoder: ScaleTable
    joiner: ScaleTable
    files: int
    chunks: int
    frames: int
    seconds: float
    forward_seconds: float  # time spent inside ncnn forward passes (the physical floor)
    skipped: list[str]


class _Keeper:
    """Python ncnn layers must outlive the Net: keep every instance and creator here."""

    def __init__(self):
        self.items: list = []

    def keep(self, x):
        self.items.append(x)
        return x


def _register_meta(net, keeper: _Keeper) -> None:
    import ncnn

    class SherpaMetaData(ncnn.Layer):
        def __init__(self):
            super().__init__()
            self.one_blob_only = False

        def load_param(self, pd):
            return 0

    creator = keeper.keep(lambda: keeper.keep(SherpaMetaData()))
    net.register_custom_layer("SherpaMetaData", creator, lambda layer: None)


def read_quantizable_weights(param: Path, binary: Path, encoder: bool) -> dict[str, tuple[str, np.ndarray, int, bool]]:
    """name -> (type, weights, rows, six_bit) for every quantizable layer, read through ncnn's own loader.

    Built-in Convolution / ConvolutionDepthWise / InnerProduct are replaced on a
    read-only Net by Python layers that keep what ncnn hands them; every other
    layer is loaded by ncnn itself, so the weight offsets are always right.
    """
    import ncnn

    keeper = _Keeper()
    found: dict[str, tuple[str, np.ndarray, int, bool]] = {}

    def make(kind: str):
        class Reader(ncnn.Layer):
            def __init__(self):
                super().__init__()
                self.one_blob_only = True

            def load_param(self, pd):
                self.num_output = pd.get(0, 0)
                self.int8 = pd.get(8, 0)
                if kind == "InnerProduct":
                    self.bias_term, self.size, self.rows, self.six_bit = pd.get(1, 0), pd.get(2, 0), pd.get(0, 0), False
                else:
                    kw = pd.get(1, 0)
                    kh, dw, sw = pd.get(11, kw), pd.get(2, 1), pd.get(3, 1)
                    dh, sh = pd.get(12, dw), pd.get(13, sw)
                    self.bias_term, self.size = pd.get(5, 0), pd.get(6, 0)
                    self.rows = pd.get(7, 1) if kind == "ConvolutionDepthWise" else self.num_output
                    self.six_bit = kind == "Convolution" and (kw, kh, dw, dh, sw, sh) == (3, 3, 1, 1, 1, 1)
                return 0

            def load_model(self, mb):
                if self.int8:
                    raise CalibrationError(f"{param}: already quantized (int8_scale_term set); calibrate the fp32 model")
                weights = np.array(mb.load(self.size, 0)).copy()
                if self.bias_term:
                    mb.load(self.num_output, 1)
                self.weights = weights
                return 0

        creator = keeper.keep(lambda: keeper.keep(Reader()))
        return creator

    net = ncnn.Net()
    keeper.keep(net)
    if encoder:
        _register_meta(net, keeper)
    for kind in QUANTIZABLE:
        net.register_custom_layer(kind, make(kind), lambda layer: None)
    if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
        raise CalibrationError(f"{param}: python ncnn could not load it with {binary}")
    for layer in net.layers():
        if layer.type in QUANTIZABLE:
            found[layer.name] = (layer.type, layer.weights, layer.rows, layer.six_bit)
    return found


def check_wavs(wavs: list[Path], segment_frames: int) -> WavCheck:
    """Which files can be used, and a sentence for each one that cannot (before anything runs)."""
    check = WavCheck()
    min_seconds = (segment_frames + 1) * 0.01
    for wav in wavs:
        try:
            w = read_wav(wav)
        except AudioError as exc:
            check.problems.append(str(exc))
            continue
        if w.sample_rate != SAMPLE_RATE:
            check.problems.append(f"{wav}: {w.sample_rate} Hz; calibration needs 16 kHz audio (resample it first)")
        elif w.channels != 1:
            check.usable.append(Path(wav))
            check.problems.append(f"{wav}: {w.channels} channels; only the first is used (as sherpa-ncnn does)")
        elif w.seconds < min_seconds:
            check.problems.append(f"{wav}: {w.seconds:.2f} s is shorter than one chunk ({min_seconds:.2f} s); "
                                  "it would contribute nothing")
        else:
            check.usable.append(Path(wav))
    return check


def _initial_states(arch: ArchSpec, meta: dict) -> list[np.ndarray]:
    if arch.name == "lstm":
        layers, dim, hidden = meta[1], meta[2], meta[3]
        return [np.array([9.0], dtype=np.float32), np.zeros((layers, dim), np.float32),
                np.zeros((layers, hidden), np.float32)]
    if arch.name == "conv-emformer":
        layers, memory, kernel, left, dim = meta[1], meta[2], meta[3], meta[4], meta[7]
        states = []
        for _ in range(layers):
            states += [np.zeros((memory, dim), np.float32), np.zeros((left, dim), np.float32),
                       np.zeros((left, dim), np.float32), np.zeros((dim, kernel - 1), np.float32)]
        return states
    layers, dims, att, ds, kernels = (list(meta[k]) for k in (16, 17, 18, 19, 20))
    left = meta[1] // 2 * meta[2]
    n = len(layers)
    kinds = [
        [np.zeros((layers[i],), np.float32) for i in range(n)],
        [np.zeros((layers[i], dims[i]), np.float32) for i in range(n)],
        [np.zeros((layers[i], left // ds[i], att[i]), np.float32) for i in range(n)],
        [np.zeros((layers[i], left // ds[i], att[i] // 2), np.float32) for i in range(n)],
        [np.zeros((layers[i], left // ds[i], att[i] // 2), np.float32) for i in range(n)],
        [np.zeros((layers[i], dims[i], kernels[i] - 1), np.float32) for i in range(n)],
        [np.zeros((layers[i], dims[i], kernels[i] - 1), np.float32) for i in range(n)],
    ]
    return [s for kind in kinds for s in kind]


def _bottom_names(net, layers) -> dict[str, str]:
    """layer name -> name of its input blob, for the quantizable layers."""
    blobs = net.blobs()
    return {layer.name: blobs[layer.bottoms[0]].name for layer in layers if layer.type in QUANTIZABLE}


def calibrate(files: ModelFiles, wavs: list[Path],
              on_progress: Callable[[int, int, str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, threads: int = 1) -> CalibrationResult:
    """Stream the calibration audio through the fp32 model and return the encoder and joiner tables."""
    import ncnn

    t_start = time.perf_counter()
    parsed = load_param(files.encoder_param)
    meta = read_metadata(parsed.model) if parsed.model else None
    if not meta or meta.get(0) not in BY_MODEL_TYPE:
        raise CalibrationError(f"{files.encoder_param}: no SherpaMetaData; add it first "
                               "(sherpa-ncnn-wizard meta ... --apply): calibration needs the chunk sizes")
    arch = BY_MODEL_TYPE[meta[0]]
    segment, offset = arch.segment_offset(arch.values_from_metadata(meta))
    check = check_wavs(wavs, segment)
    if not check.usable:
        raise CalibrationError("no usable calibration audio: " + ("; ".join(check.problems) or "the list is empty"))

    keeper = _Keeper()
    nets = {}
    for name, (param, binary) in {"encoder": (files.encoder_param, files.encoder_bin),
                                  "decoder": (files.decoder_param, files.decoder_bin),
                                  "joiner": (files.joiner_param, files.joiner_bin)}.items():
        net = keeper.keep(ncnn.Net())
        net.opt.num_threads = threads
        if name == "encoder":
            _register_meta(net, keeper)
        if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
            raise CalibrationError(f"{param}: python ncnn could not load it with {binary}")
        nets[name] = net
    enc_bottoms = _bottom_names(nets["encoder"], nets["encoder"].layers())
    join_bottoms = _bottom_names(nets["joiner"], nets["joiner"].layers())
    enc_stats = {blob: BlobStats() for blob in set(enc_bottoms.values())}
    join_stats = {blob: BlobStats() for blob in set(join_bottoms.values())}
    n_states = len(_initial_states(arch, meta))
    state_sources = [2, 3] if arch.name == "lstm" else list(range(1, n_states + 1))
    state_targets = [2, 3] if arch.name == "lstm" else list(range(1, n_states + 1))

    chunks = frames = 0
    forward = 0.0
    total = len(check.usable)
    for index, wav in enumerate(check.usable):
        if cancelled and cancelled():
            raise CalibrationError("cancelled")
        if on_progress:
            on_progress(index, total, f"Processing {wav}")
        w = read_wav(wav)
        feats = fbank(w.samples, w.sample_rate)
        states = _initial_states(arch, meta)
        context = [0] * CONTEXT_SIZE
        decoder_out = _run_decoder(nets["decoder"], context)
        processed = 0
        while processed + segment <= len(feats):
            chunk = np.ascontiguousarray(feats[processed: processed + segment])
            processed += offset
            t0 = time.perf_counter()
            ex = nets["encoder"].create_extractor()
            ex.set_light_mode(False)
            keep = [chunk] + states
            ex.input("in0", ncnn.Mat(chunk))
            for k, state in enumerate(states, start=1):
                ex.input(f"in{k}", ncnn.Mat(state))
            ret, out0 = ex.extract("out0")
            if ret != 0:
                raise CalibrationError(f"{files.encoder_param}: the encoder failed on {wav} (extract returned {ret})")
            encoder_out = np.array(out0).reshape(-1, np.array(out0).shape[-1]).copy()
            new_states = []
            for target, source in zip(state_targets, state_sources):
                _, mat = ex.extract(f"out{source}")
                new_states.append(np.array(mat).reshape(states[target - 1].shape).astype(np.float32))
            for blob, stats in enc_stats.items():
                _, mat = ex.extract(blob)
                stats.add(np.array(mat))
            forward += time.perf_counter() - t0
            del keep
            if arch.name == "lstm":
                states = [states[0]] + new_states
            else:
                states = new_states
            chunks += 1
            for frame in encoder_out:
                frame = np.ascontiguousarray(frame, dtype=np.float32)
                t0 = time.perf_counter()
                jex = nets["joiner"].create_extractor()  # fresh per frame: each frame's statistics are its own
                jex.set_light_mode(False)
                jex.input("in0", ncnn.Mat(frame))
                jex.input("in1", ncnn.Mat(decoder_out))
                _, logits = jex.extract("out0")
                for blob, stats in join_stats.items():
                    _, mat = jex.extract(blob)
                    stats.add(np.array(mat))
                token = int(np.argmax(np.array(logits)))
                if token not in BLANK_IDS:
                    context = context[1:] + [token]
                    decoder_out = _run_decoder(nets["decoder"], context)
                forward += time.perf_counter() - t0
                frames += 1
    if on_progress:
        on_progress(total, total, "statistics collected; choosing thresholds")
    enc_table = _table(files.encoder_param, files.encoder_bin, enc_bottoms, enc_stats, encoder=True)
    join_table = _table(files.joiner_param, files.joiner_bin, join_bottoms, join_stats, encoder=False)
    return CalibrationResult(enc_table, join_table, total, chunks, frames, time.perf_counter() - t_start, forward,
                             check.problems)


def _run_decoder(net, context: list[int]) -> np.ndarray:
    import ncnn
    ids = np.array(context, dtype=np.int32)
    ex = net.create_extractor()
    ex.input("in0", ncnn.Mat(ids))
    _, out = ex.extract("out0")
    return np.ascontiguousarray(np.array(out).reshape(-1), dtype=np.float32)


def _table(param: Path, binary: Path, bottoms: dict[str, str], stats: dict[str, BlobStats], encoder: bool) -> ScaleTable:
    weights = read_quantizable_weights(param, binary, encoder)
    table = ScaleTable()
    for name, (kind, w, rows, six_bit) in weights.items():
        table.weights[name] = weight_scales(name, w, rows, six_bit)
    for name, blob in bottoms.items():
        table.activations[name] = activation_scale(name, stats[blob])
    return table
