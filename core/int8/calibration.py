"""Run the fp32 model over calibration audio the way sherpa-ncnn streams it, and build the scale tables.

The encoder is fed Segment frames at a time, advancing by Offset, with its
states carried from chunk to chunk (zeros at the start of every file); the
joiner runs per output frame of a greedy search (context 2, blank 0, token 2
skipped, as sherpa-ncnn does), each frame with a fresh extractor so each
frame's statistics really are that frame's. The inputs of every quantizable
layer of the encoder and the joiner feed core.int8.calibrate's statistics.

The streaming loop lives in ``Streamer`` (shared with core.int8.check and the
calibration benchmark's floor); calibration adds only hooks that take the
quantizable inputs during each light-mode forward. A graph input's values are
the array fed in, and the joiner's decoder-side input is counted once per frame
it served, in one go: the statistics are bit-identical to extracting every
blob on every chunk and frame (pinned by tests/test_calibration_run.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.common.audio import SAMPLE_RATE, AudioError, fbank, read_wav
from core.common.problems import Problem, ProblemKind
from core.int8.calibrate import QUANTIZABLE, BlobStats, CalibrationError, ScaleTable, activation_scale, weight_scales
from core.model.architectures import BY_MODEL_TYPE, ArchSpec
from core.model.metadata import read_metadata
from core.ncnn.net import Keeper, as_mat, register_meta_layer
from core.ncnn.param import load_param

CONTEXT_SIZE = 2
POOL_WORTH_SECONDS = 8.0  # serial work left below which worker processes are not started
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
    short: list[str] = field(default_factory=list)  # files shorter than one chunk: skipped, harmless if others remain
    notes: list[str] = field(default_factory=list)  # usable files with something to say (extra channels)


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


def read_quantizable_weights(param: Path, binary: Path) -> dict[str, tuple[str, np.ndarray, int, bool]]:
    """name -> (type, weights, rows, six_bit) for every quantizable layer, read through ncnn's own loader
    (core.int8.quantize.read_layout: the quantizable layers are Python readers, everything else is ncnn's)."""
    from core.ncnn.bin_layout import LayoutError, read_layout
    try:
        regions, _ = read_layout(param, Path(binary).read_bytes(), kinds=QUANTIZABLE)
    except LayoutError as exc:
        raise CalibrationError(str(exc)) from None
    return {name: (r.type, r.weights, r.rows, r.six_bit) for name, r in regions.items()}


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
            check.problems.append(Problem(ProblemKind.SAMPLE_RATE, f"{w.sample_rate} Hz", key=str(wav),
                                          how="; calibration needs 16 kHz audio (resample it first)"))
        elif w.channels != 1:
            check.usable.append(Path(wav))
            check.notes.append(f"{wav}: {w.channels} channels; only the first is used (as sherpa-ncnn does)")
            check.problems.append(check.notes[-1])
        elif w.seconds < min_seconds:
            check.short.append(f"{wav}: {w.seconds:.2f} s is shorter than one chunk ({min_seconds:.2f} s); "
                               "it would contribute nothing")
            check.problems.append(check.short[-1])
        else:
            check.usable.append(Path(wav))
    return check


def _bottom_names(net, layers) -> dict[str, str]:
    """layer name -> name of its input blob, for the quantizable layers."""
    blobs = net.blobs()
    return {layer.name: blobs[layer.bottoms[0]].name for layer in layers if layer.type in QUANTIZABLE}


def _topological(net, blobs: set[str]) -> list[str]:
    """``blobs`` in the order their producing layers run."""
    order = {b.name: (b.producer, i) for i, b in enumerate(net.blobs())}
    return sorted(blobs, key=lambda name: order[name])


@dataclass
class FileStats:
    """One file's statistics: what a worker sends back and what the cache keeps."""

    encoder: dict[str, BlobStats]
    joiner: dict[str, BlobStats]
    chunks: int
    frames: int
    forward: float

    def to_arrays(self) -> dict:
        out = {"chunks": np.int64(self.chunks), "frames": np.int64(self.frames), "forward": np.float64(self.forward)}
        for part, stats in (("encoder", self.encoder), ("joiner", self.joiner)):
            for blob, st in stats.items():
                for key, value in st.to_arrays().items():
                    out[f"{part}|{blob}|{key}"] = value
        return out

    @classmethod
    def from_arrays(cls, d) -> "FileStats":
        parts: dict[str, dict[str, dict]] = {"encoder": {}, "joiner": {}}
        for key in d:
            if key.count("|") == 2:
                part, blob, field_name = key.split("|")
                parts[part].setdefault(blob, {})[field_name] = d[key]
        return cls({b: BlobStats.from_arrays(v) for b, v in parts["encoder"].items()},
                   {b: BlobStats.from_arrays(v) for b, v in parts["joiner"].items()},
                   int(d["chunks"]), int(d["frames"]), float(d["forward"]))


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


class _ModelRunner:
    """The three nets loaded once (per process), able to produce one file's statistics."""

    def __init__(self, files: ModelFiles, threads: int = 1):
        import ncnn

        parsed = load_param(files.encoder_param)
        self.meta = read_metadata(parsed.model) if parsed.model else None
        if not self.meta or self.meta.get(0) not in BY_MODEL_TYPE:
            raise CalibrationError(f"{files.encoder_param}: no SherpaMetaData; add it first "
                                   "(sherpa-ncnn-wizard meta ... --apply): calibration needs the chunk sizes",
                                   ProblemKind.BAD_INPUT)
        self.arch = BY_MODEL_TYPE[self.meta[0]]
        self.segment, self.offset = self.arch.segment_offset(self.arch.values_from_metadata(self.meta))
        self.keeper = Keeper()
        self.nets = {}
        for name, (param, binary) in {"encoder": (files.encoder_param, files.encoder_bin),
                                      "decoder": (files.decoder_param, files.decoder_bin),
                                      "joiner": (files.joiner_param, files.joiner_bin)}.items():
            net = self.keeper.keep(ncnn.Net())
            net.opt.num_threads = threads
            if name == "encoder":
                register_meta_layer(net, self.keeper)
            if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
                raise CalibrationError(f"{param}: python ncnn could not load it with {binary}")
            self.nets[name] = net
        self.enc_bottoms = _bottom_names(self.nets["encoder"], self.nets["encoder"].layers())
        self.join_bottoms = _bottom_names(self.nets["joiner"], self.nets["joiner"].layers())
        self.streamer = Streamer(self.nets["encoder"], self.nets["decoder"], self.nets["joiner"], self.arch, self.meta)
        self.state_map = self.streamer.state_map
        self.enc_order = _topological(self.nets["encoder"], set(self.enc_bottoms.values()))
        self.join_order = _topological(self.nets["joiner"], set(self.join_bottoms.values()))

    def run_file(self, wav: Path) -> FileStats:
        enc = {blob: BlobStats() for blob in set(self.enc_bottoms.values())}
        join = {blob: BlobStats() for blob in set(self.join_bottoms.values())}
        w = read_wav(wav)
        feats = fbank(w.samples, w.sample_rate)
        # a graph input's values are the array we fed: no copy out of ncnn. The joiner's decoder-side input is
        # the same vector for every frame until a token is emitted: counted once per frame it served, in one go.
        enc_blobs = [blob for blob in self.enc_order if blob != "in0"]
        join_blobs = [blob for blob in self.join_order if blob not in ("in0", "in1")]
        enc_stats, join_stats = [enc[b] for b in enc_blobs], [join[b] for b in join_blobs]
        enc_in, join_in, dec_in = enc.get("in0"), join.get("in0"), join.get("in1")
        served = [0, None]  # frames the current decoder output has served since it was last counted; that output

        def on_chunk(chunk, states, encoder_out, mats):
            if enc_in is not None:
                enc_in.add(chunk)
            for stats, mat in zip(enc_stats, mats):
                stats.add(np.asarray(mat))

        def on_frame(frame, decoder_out, token, logits, mats):
            if join_in is not None:
                join_in.add(frame)
            for stats, mat in zip(join_stats, mats):
                stats.add(np.asarray(mat))
            if dec_in is not None:
                served[0] += 1
                served[1] = decoder_out
                if token not in BLANK_IDS:
                    dec_in.add(decoder_out, times=served[0])
                    served[0] = 0

        chunks, frames, forward = self.streamer.run(feats, on_chunk, on_frame, enc_blobs, join_blobs, name=str(wav))
        if served[0]:
            dec_in.add(served[1], times=served[0])
        return FileStats(enc, join, chunks, frames, forward)


_WORKER: _ModelRunner | None = None


def _init_worker(files: ModelFiles) -> None:
    global _WORKER
    _WORKER = _ModelRunner(files)


def _work(wav: str) -> tuple[str, dict]:
    return wav, _WORKER.run_file(Path(wav)).to_arrays()


def _cache_key(model_key: str, wav: Path) -> str:
    import hashlib
    h = hashlib.sha256(model_key.encode())
    h.update(Path(wav).read_bytes())
    return h.hexdigest()[:32]


def _model_key(files: ModelFiles) -> str:
    import hashlib
    h = hashlib.sha256()
    for p in vars(files).values():
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def calibrate(files: ModelFiles, wavs: list[Path],
              on_progress: Callable[[int, int, str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, workers: int | None = None,
              cache_dir: Path | None = None) -> CalibrationResult:
    """Stream the calibration audio through the fp32 model and return the encoder and joiner tables.

    Files are processed in parallel worker processes (one per core) when there
    are several; each file's statistics are cached under ``cache_dir`` (keyed
    by the model's and the file's bytes) so a resumed run skips finished files.
    """
    import os

    t_start = time.perf_counter()
    runner = _ModelRunner(files)
    check = check_wavs(wavs, runner.segment)
    if not check.usable:
        raise CalibrationError("no usable calibration audio: " + ("; ".join(check.problems) or "the list is empty"),
                               ProblemKind.BAD_INPUT)
    total = len(check.usable)
    model_key = _model_key(files) if cache_dir else ""
    results: dict[str, FileStats] = {}
    todo: list[Path] = []
    for wav in check.usable:
        cached = Path(cache_dir) / f"{_cache_key(model_key, wav)}.npz" if cache_dir else None
        if cached is not None and cached.exists():
            with np.load(cached) as d:
                results[str(wav)] = FileStats.from_arrays(d)
        else:
            todo.append(wav)

    def done(wav: str, stats: FileStats) -> None:
        results[wav] = stats
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            target = Path(cache_dir) / f"{_cache_key(model_key, Path(wav))}.npz"
            tmp = target.with_suffix(".tmp.npz")
            np.savez(tmp, **stats.to_arrays())
            os.replace(tmp, target)
        if on_progress:
            elapsed = time.perf_counter() - t_start
            finished = len(results)
            fresh = max(1, finished - (total - len(todo)))
            eta = elapsed / fresh * (total - finished)
            on_progress(finished, total, f"Processing {wav} (ETA {eta:.0f} s)")

    if on_progress:
        on_progress(len(results), total, f"{len(results)} file(s) from the cache" if results else "starting")
    n_workers = min(workers or os.cpu_count() or 1, len(todo))
    if n_workers > 1 and workers is None and todo:
        # worker processes cost ~1-2 s to start: time one file here and use them only when they pay off
        first = todo.pop(0)
        t0 = time.perf_counter()
        done(str(first), runner.run_file(first))
        if (time.perf_counter() - t0) * len(todo) < POOL_WORTH_SECONDS:
            n_workers = 1
        n_workers = min(n_workers, len(todo))
    if n_workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker, initargs=(files,)) as pool:
            futures = [pool.submit(_work, str(w)) for w in todo]
            for future in as_completed(futures):
                if cancelled and cancelled():
                    pool.shutdown(cancel_futures=True)
                    raise CalibrationError("cancelled")
                wav, arrays = future.result()
                done(wav, FileStats.from_arrays(arrays))
    else:
        for wav in todo:
            if cancelled and cancelled():
                raise CalibrationError("cancelled")
            done(str(wav), runner.run_file(wav))

    enc = {blob: BlobStats() for blob in set(runner.enc_bottoms.values())}
    join = {blob: BlobStats() for blob in set(runner.join_bottoms.values())}
    chunks = frames = 0
    forward = 0.0
    for wav in check.usable:  # merge in file order: the result does not depend on which worker finished first
        fs = results[str(wav)]
        for blob, st in fs.encoder.items():
            enc[blob].merge(st)
        for blob, st in fs.joiner.items():
            join[blob].merge(st)
        chunks, frames, forward = chunks + fs.chunks, frames + fs.frames, forward + fs.forward
    if on_progress:
        on_progress(total, total, "statistics collected; choosing thresholds")
    enc_table = _table(files.encoder_param, files.encoder_bin, runner.enc_bottoms, enc)
    join_table = _table(files.joiner_param, files.joiner_bin, runner.join_bottoms, join)
    return CalibrationResult(enc_table, join_table, total, chunks, frames, time.perf_counter() - t_start, forward,
                             check.problems)


def _run_decoder(net, context: list[int]) -> np.ndarray:
    ids = np.array(context, dtype=np.int32)
    ex = net.create_extractor()
    ex.input("in0", as_mat(ids))
    _, out = ex.extract("out0")
    return np.ascontiguousarray(np.array(out).reshape(-1), dtype=np.float32)


def _table(param: Path, binary: Path, bottoms: dict[str, str], stats: dict[str, BlobStats]) -> ScaleTable:
    weights = read_quantizable_weights(param, binary)
    table = ScaleTable()
    for name, (kind, w, rows, six_bit) in weights.items():
        table.weights[name] = weight_scales(name, w, rows, six_bit)
    for name, blob in bottoms.items():
        table.activations[name] = activation_scale(name, stats[blob])
    return table
