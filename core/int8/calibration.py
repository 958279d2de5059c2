"""Run the fp32 model over calibration audio the way sherpa-ncnn streams it, and build the scale tables.

The encoder is fed Segment frames at a time, advancing by Offset, with its
states carried from chunk to chunk (zeros at the start of every file); the
joiner runs per output frame of a greedy search (context 2, blank 0, token 2
skipped, as sherpa-ncnn does), each frame with a fresh extractor so each
frame's statistics really are that frame's. The inputs of every quantizable
layer of the encoder and the joiner feed core.int8.calibrate's statistics.

The streaming loop lives in core.int8.streamer.Streamer (shared with core.int8.check and the
calibration benchmark's floor); calibration adds only hooks that take the
quantizable inputs during each light-mode forward. A graph input's values are
the array fed in, and the joiner's decoder-side input is counted once per frame
it served, in one go: the statistics are bit-identical to extracting every
blob on every chunk and frame (pinned by tests/core/int8/test_calibration_run.py).

Memory stays near the floor (interpreter, numpy, ncnn and the nets): values are copied
into one reusable buffer per blob, each file's statistics are merged as soon as its
turn comes, the two-pass mode keeps at most RECORD_BYTES of activations, and the weight
scales are read one quantizable layer at a time (core.int8.weight_scales), never the whole .bin.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.common.audio import SAMPLE_RATE, AudioError, fbank, read_wav
from core.common.cores import usable_cores
from core.common.problems import Problem, ProblemKind
from core.int8.calibrate import (
    DEFAULT_HISTOGRAM,
    HISTOGRAM_MODES,
    JOINER_KEEPS_RANGE,
    QUANTIZABLE,
    BlobStats,
    CalibrationError,
    ExactStats,
    RecordBudget,
    ScaleTable,
    activation_scale,
)
from core.int8.streamer import BLANK_IDS, Streamer
from core.int8.weight_scales import read_quantizable_weights, weight_scale_table  # noqa: F401 (re-exported)
from core.model.architectures import BY_MODEL_TYPE
from core.model.metadata import read_metadata
from core.ncnn.net import Keeper, register_meta_layer
from core.ncnn.param import load_param

POOL_WORTH_SECONDS = 8.0  # serial work left below which worker processes are not started


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
    histogram: str = "one-pass"  # core.int8.calibrate.HISTOGRAM_MODES
    worst: list = field(default_factory=list)  # core.int8.histograms.worst_layers: where int8 clips most


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

    encoder: dict[str, BlobStats | ExactStats]
    joiner: dict[str, BlobStats | ExactStats]
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
        def load(v):
            return (ExactStats if "exact" in v else BlobStats).from_arrays(v)
        return cls({b: load(v) for b, v in parts["encoder"].items()}, {b: load(v) for b, v in parts["joiner"].items()},
                   int(d["chunks"]), int(d["frames"]), float(d["forward"]))


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

    def features(self, wav: Path) -> np.ndarray:
        w = read_wav(wav)
        return fbank(w.samples, w.sample_rate)

    def run_file(self, wav: Path, make: Callable[[str, str], object] | None = None,
                 feats: np.ndarray | None = None, observer=None) -> FileStats:
        """One file's statistics: ``make(part, blob)`` builds each blob's (default BlobStats, the one-pass
        histogram); ``feats``: the file's features when already computed; ``observer``: also gets each chunk and
        frame (core.int8.recorder.Recorder)."""
        make = make or (lambda _part, _blob: BlobStats())
        enc = {blob: make("encoder", blob) for blob in set(self.enc_bottoms.values())}
        join = {blob: make("joiner", blob) for blob in set(self.join_bottoms.values())}
        if feats is None:
            feats = self.features(wav)
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
            if observer is not None:
                observer.on_chunk(chunk, states, encoder_out)

        def on_frame(frame, decoder_out, token, logits, mats):
            if join_in is not None:
                join_in.add(frame)
            for stats, mat in zip(join_stats, mats):
                stats.add(np.asarray(mat))
            if observer is not None:
                observer.on_frame(frame, decoder_out, token, logits)
            if dec_in is not None:
                served[0] += 1
                served[1] = decoder_out
                if token not in BLANK_IDS:
                    dec_in.add(decoder_out, times=served[0])
                    served[0] = 0

        chunks, frames, forward = self.streamer.run(feats, on_chunk, on_frame, enc_blobs, join_blobs, name=str(wav))
        if served[0]:
            dec_in.add(served[1], times=served[0])
        for st in (*enc.values(), *join.values()):
            st.flush(release=True)  # binned (or kept) now: the batch buffers go
        return FileStats(enc, join, chunks, frames, forward)


# -- the passes over the files ---------------------------------------------------------------------------------
# A job says what one file's run collects: ("one-pass",) the one-pass histograms; ("absmax",) only each input's
# largest |x| (the two-pass mode's first pass); ("exact", encoder absmax, joiner absmax) ncnn's 2048 bins over
# [0, absmax] (its second pass).

RECORD_BYTES = 16 << 20  # activations the first pass keeps so the second needs no forward pass (two-pass mode)
FEATURE_CACHE_BYTES = 32 << 20  # features kept from the first pass for the second (~17 min of audio)


def _maker(job: tuple, record: RecordBudget | None = None):
    if job[0] == "one-pass":
        return None
    if job[0] == "absmax":
        return lambda _part, _blob: ExactStats(record=record if record is not None else RecordBudget(0))
    enc_max, join_max = job[1], job[2]
    return lambda part, blob: ExactStats((enc_max if part == "encoder" else join_max)[blob])


_WORKER: _ModelRunner | None = None
_WORKER_FEATS: dict[str, np.ndarray] = {}


def _init_worker(files: ModelFiles) -> None:
    global _WORKER
    _WORKER = _ModelRunner(files)


def _work(wav: str, job: tuple) -> tuple[str, dict]:
    """One file's job in a worker process. Features from its first pass are kept for its second (the file may
    come back to another worker, which then computes them)."""
    feats = _WORKER_FEATS.pop(wav, None)
    if feats is None:
        feats = _WORKER.features(Path(wav))
    if job[0] == "absmax" and sum(f.nbytes for f in _WORKER_FEATS.values()) + feats.nbytes <= FEATURE_CACHE_BYTES:
        _WORKER_FEATS[wav] = feats
    return wav, _WORKER.run_file(Path(wav), _maker(job), feats).to_arrays()


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


def _job_key(job: tuple) -> str:
    """What a cached file's statistics depend on besides the model and the file."""
    import hashlib
    if job[0] != "exact":
        return job[0]
    h = hashlib.sha256()
    for table in job[1:]:
        for blob in sorted(table):
            h.update(f"{blob}={table[blob]!r};".encode())
    return "exact-" + h.hexdigest()[:16]


class _Passes:
    """Runs jobs over the files (serially, or in worker processes when that pays off) and hands each file's
    statistics back in file order as soon as its turn comes, so only the running totals stay in memory."""

    def __init__(self, files: ModelFiles, runner: _ModelRunner, wavs: list[Path], workers: int | None,
                 cache_dir: Path | None, on_progress, cancelled, passes: int, recorder=None):
        self.files, self.runner, self.wavs, self.recorder = files, runner, wavs, recorder
        self.workers, self.cache_dir, self.on_progress, self.cancelled = workers, cache_dir, on_progress, cancelled
        self.model_key = _model_key(files) if cache_dir else ""
        self.total, self.finished, self.t_start = len(wavs) * passes, 0, time.perf_counter()
        self.pool, self.pool_decided = None, workers is not None
        self.feats: dict[str, np.ndarray] = {}  # the first pass's features, for the second (serial runs)
        self.record = RecordBudget(RECORD_BYTES)
        self.recorded: dict[str, FileStats] = {}  # first-pass statistics that kept their values
        self.started = False

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def _cached(self, job: tuple, wav: Path) -> Path | None:
        if not self.cache_dir:
            return None
        return Path(self.cache_dir) / f"{_cache_key(self.model_key + '|' + _job_key(job), wav)}.npz"

    def _records(self, wav: Path) -> bool:
        """Does this file's next run record the int8 check's fp32 half? (The first file's first run, here.)"""
        return self.recorder is not None and not self.recorder.finished and Path(wav) == Path(self.wavs[0])

    def _local(self, wav: Path, job: tuple) -> FileStats:
        """One file's job in this process (features and recorded values from the first pass reused)."""
        key = str(wav)
        if job[0] == "exact" and key in self.recorded:
            stats = self.recorded.pop(key)
            for part, table in (("encoder", stats.encoder), ("joiner", stats.joiner)):
                for blob, st in table.items():
                    st.set_absmax(job[1 if part == "encoder" else 2][blob])
            return stats
        feats = self.feats.pop(key, None)
        if feats is None:
            feats = self.runner.features(wav)
        observer = self.recorder if self._records(wav) else None
        stats = self.runner.run_file(wav, _maker(job, self.record), feats, observer)
        if observer is not None:
            observer.finished = True
        if job[0] == "absmax":
            parts = [*stats.encoder.values(), *stats.joiner.values()]
            if any(st.forgotten for st in parts):  # over the budget: this file runs again, from its features
                for st in parts:
                    st.forget()
                if sum(f.nbytes for f in self.feats.values()) + feats.nbytes <= FEATURE_CACHE_BYTES:
                    self.feats[key] = feats
            else:
                self.recorded[key] = stats
        return stats

    def run(self, job: tuple, take: Callable[[Path, FileStats], None]) -> None:
        """``take(wav, stats)`` for every file, in file order."""
        results: dict[str, FileStats] = {}
        todo: list[Path] = []
        nxt = 0

        def drain():
            nonlocal nxt
            while nxt < len(self.wavs) and str(self.wavs[nxt]) in results:
                take(self.wavs[nxt], results.pop(str(self.wavs[nxt])))
                nxt += 1

        def done(wav: Path, stats: FileStats, fresh: bool = True) -> None:
            cached = self._cached(job, wav)
            if fresh and cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp.npz")
                try:
                    np.savez(tmp, **stats.to_arrays())
                    os.replace(tmp, cached)
                except OSError:  # the cache only saves a rerun's work (a full disk, say): go on without it
                    tmp.unlink(missing_ok=True)
            results[str(wav)] = stats
            self.finished += 1
            if self.on_progress and fresh:
                elapsed = time.perf_counter() - self.t_start
                eta = elapsed / self.finished * (self.total - self.finished)
                self.on_progress(self.finished, self.total, f"Processing {wav} (ETA {eta:.0f} s)")
            drain()

        from_cache = 0
        for wav in self.wavs:
            cached = self._cached(job, wav)
            if cached is not None and cached.exists() and not self._records(wav):
                self.recorded.pop(str(wav), None)
                with np.load(cached) as d:
                    done(wav, FileStats.from_arrays(d), fresh=False)
                from_cache += 1
            else:
                todo.append(wav)
        if self.on_progress and (from_cache or not self.started):
            self.on_progress(self.finished, self.total, f"{from_cache} file(s) from the cache" if from_cache
                             else "starting")
        self.started = True
        if todo and not self.pool_decided:
            self.pool_decided = True
            if min(usable_cores(), len(todo)) > 1:
                # worker processes cost ~1-2 s to start: time one file here and use them only when they pay off
                first = todo.pop(0)
                t0 = time.perf_counter()
                done(first, self._local(first, job))
                if (time.perf_counter() - t0) * len(todo) * self.total / len(self.wavs) >= POOL_WORTH_SECONDS:
                    self.workers = min(usable_cores(), len(todo))
        remote = [w for w in todo if not (job[0] == "exact" and str(w) in self.recorded) and not self._records(w)]
        local = [w for w in todo if w not in remote]
        for wav in local:
            done(wav, self._local(wav, job))
        if remote and (self.workers or 1) > 1 and len(remote) > 1:
            self._run_pool(job, remote, done)
        else:
            for wav in remote:
                if self.cancelled and self.cancelled():
                    raise CalibrationError("cancelled")
                done(wav, self._local(wav, job))

    def _run_pool(self, job: tuple, todo: list[Path], done) -> None:
        from concurrent.futures import as_completed
        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self.pool = ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(self.files,))
        futures = [self.pool.submit(_work, str(w), job) for w in todo]
        for future in as_completed(futures):
            if self.cancelled and self.cancelled():
                raise CalibrationError("cancelled")
            wav, arrays = future.result()
            done(Path(wav), FileStats.from_arrays(arrays))


def calibrate(files: ModelFiles, wavs: list[Path],
              on_progress: Callable[[int, int, str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, workers: int | None = None,
              cache_dir: Path | None = None, histogram: str = DEFAULT_HISTOGRAM,
              reference: Path | None = None) -> CalibrationResult:
    """Stream the calibration audio through the fp32 model and return the encoder and joiner tables.

    ``histogram``: "one-pass" (one run; the range doubles and is re-binned to [0, absmax]) or "two-pass"
    (ncnn's: each input's absmax first, then exactly 2048 bins over [0, absmax]; the second pass reuses the
    first's features, and the first's activations while they fit in RECORD_BYTES, instead of running the model
    again). Files are processed in parallel worker processes (one per core) when that pays off; each file's
    statistics are cached under ``cache_dir`` (keyed by the model's and the file's bytes and the pass) so a
    resumed run skips finished files. Each file's statistics are merged as soon as its turn comes.
    ``reference``: where to write the int8 check's fp32 half, recorded while the first file streams here
    (core.int8.recorder: its first REFERENCE_SECONDS; that file is never taken from the cache for it).
    """
    if histogram not in HISTOGRAM_MODES:
        raise CalibrationError(f"histogram = {histogram!r} is not one of {', '.join(HISTOGRAM_MODES)}",
                               ProblemKind.BAD_INPUT)
    t_start = time.perf_counter()
    runner = _ModelRunner(files)
    check = check_wavs(wavs, runner.segment)
    if not check.usable:
        raise CalibrationError("no usable calibration audio: " + ("; ".join(check.problems) or "the list is empty"),
                               ProblemKind.BAD_INPUT)
    usable = check.usable
    recorder = None
    if reference is not None:
        from core.int8.recorder import REFERENCE_SECONDS, Recorder
        recorder = Recorder.for_seconds(REFERENCE_SECONDS, runner.offset)
    passes = _Passes(files, runner, usable, workers, cache_dir, on_progress, cancelled,
                     1 if histogram == "one-pass" else 2, recorder)
    counts = {"chunks": 0, "frames": 0, "forward": 0.0}

    def count(fs: FileStats) -> None:
        counts["chunks"] += fs.chunks
        counts["frames"] += fs.frames
        counts["forward"] += fs.forward

    try:
        if histogram == "one-pass":
            enc = {blob: BlobStats() for blob in set(runner.enc_bottoms.values())}
            join = {blob: BlobStats() for blob in set(runner.join_bottoms.values())}

            def take(_wav, fs: FileStats) -> None:  # in file order: the result does not depend on the workers
                for total, part in ((enc, fs.encoder), (join, fs.joiner)):
                    for blob, st in part.items():
                        total[blob].merge(st)
                count(fs)
            passes.run(("one-pass",), take)
        else:
            enc_max = {blob: 0.0 for blob in set(runner.enc_bottoms.values())}
            join_max = {blob: 0.0 for blob in set(runner.join_bottoms.values())}

            def take_max(_wav, fs: FileStats) -> None:
                for total, part in ((enc_max, fs.encoder), (join_max, fs.joiner)):
                    for blob, st in part.items():
                        total[blob] = max(total[blob], st.seen)
                count(fs)
            passes.run(("absmax",), take_max)
            enc = {blob: ExactStats(a) for blob, a in enc_max.items()}
            join = {blob: ExactStats(a) for blob, a in join_max.items()}

            def take_exact(_wav, fs: FileStats) -> None:
                for total, part in ((enc, fs.encoder), (join, fs.joiner)):
                    for blob, st in part.items():
                        total[blob].merge(st)
            passes.run(("exact", enc_max, join_max), take_exact)
    finally:
        passes.close()
        for net in runner.nets.values():
            net.clear()  # the nets' weights go before the weight scales are read: the step's peak is the forward's
    if recorder is not None:
        try:
            recorder.save(Path(reference), f"the first {recorder.seconds:.1f} s of {usable[0].name} "
                                           "(calibration audio)")
        except OSError as exc:
            raise CalibrationError(f"{reference}: could not write the int8 check's fp32 half "
                                   f"({exc.strerror or exc}); free some space there and run again",
                                   ProblemKind.FAILED) from None
    if on_progress:
        on_progress(passes.total, passes.total, "statistics collected; choosing thresholds")
    enc_table = _table(files.encoder_param, files.encoder_bin, runner.enc_bottoms, enc)
    join_table = _table(files.joiner_param, files.joiner_bin, runner.join_bottoms, join, clip=not JOINER_KEEPS_RANGE)
    from core.int8.histograms import worst_layers
    worst = worst_layers({"encoder": (enc_table, runner.enc_bottoms, enc),
                          "joiner": (join_table, runner.join_bottoms, join)})
    return CalibrationResult(enc_table, join_table, len(usable), counts["chunks"], counts["frames"],
                             time.perf_counter() - t_start, counts["forward"], check.problems, histogram, worst)


def _table(param: Path, binary: Path, bottoms: dict[str, str], stats: dict, clip: bool = True) -> ScaleTable:
    table = ScaleTable()
    table.weights.update(weight_scale_table(param, binary))  # one layer's weights in memory at a time
    for name, blob in bottoms.items():
        table.activations[name] = activation_scale(name, stats[blob], clip)
    return table
