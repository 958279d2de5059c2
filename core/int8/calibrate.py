"""Built-in int8 calibration: sherpa-ncnn's scale tables without building anything.

What ``generate-int8-scale-table`` does, in Python on the ncnn wheel, with its
known problems fixed (sherpa-ncnn.md §3.1):

* features exactly as sherpa-ncnn computes them, the fp32 encoder run chunk by
  chunk with its states (Segment/Offset from the metadata), the joiner run per
  frame of greedy search with a fresh extractor each time (upstream records the
  first frame's values T times);
* for every quantizable layer (Convolution, ConvolutionDepthWise, InnerProduct)
  the input blob's absmax and a 2048-bin histogram of |x| (zeros excluded), the
  threshold chosen by KL divergence against 128 target bins (ncnn's method),
  scale = 127 / threshold; weight scales per output channel 127 / absmax (31 for
  3x3 stride-1 convolutions, as ncnn's winograd int8 path needs);
* one forward pass per chunk instead of upstream's two: the histogram's range
  doubles (pairs of fine bins merged) as larger values appear, and is re-binned
  to exactly [0, absmax] at the end;
* or, with ``[calibration] histogram = "two-pass"``, ncnn's own way
  (``ExactStats``): a first pass for each input's absmax, a second that bins
  every value into exactly 2048 bins over [0, absmax] (zeros excluded);
* no inf/nan/zero scale is ever written: a dead input or an all-zero weight row
  is reported with the layer's name.

The tables use ncnn's format (``name_param_0 s0 s1 ...`` lines, then
``name s`` lines), so upstream ``ncnn2int8`` reads them too.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from core.common.problems import ProblemError

QUANTIZABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
NUM_BINS = 2048
TARGET_BINS = 128
KL_EPS = 1e-4
FINE_FACTOR = 8  # internal bins per output bin, so re-binning to [0, absmax] stays accurate
HISTOGRAM_MODES = ("one-pass", "two-pass")
DEFAULT_HISTOGRAM = "one-pass"  # no better int8 cosine from two-pass on the fixtures (README, benchmarks/bench_calibrate.py)


class CalibrationError(ProblemError):
    """Calibration cannot produce a usable table; the message names the layer or file, the kind says whether the
    input is at fault (BAD_INPUT) or the tool failed (FAILED, the default)."""


class _Buffer:
    """float32 values gathered for one batched numpy pass. They are copied in, so no reference to an ncnn Mat
    (and the allocation behind it) outlives the forward pass that made it; the array is reused batch after batch."""

    def __init__(self):
        self.data: np.ndarray | None = None
        self.used = 0

    def push(self, values: np.ndarray) -> None:
        end = self.used + values.size
        if self.data is None or end > self.data.size:
            grown = np.empty(max(end, 2 * (0 if self.data is None else self.data.size), 4096), dtype=np.float32)
            if self.used:
                grown[: self.used] = self.data[: self.used]
            self.data = grown
        self.data[self.used: end] = values
        self.used = end

    def take(self) -> np.ndarray:
        """The values gathered (a view, valid until the next push) and an empty buffer."""
        view = self.data[: self.used] if self.used else np.empty(0, np.float32)
        self.used = 0
        return view

    def release(self) -> None:
        self.data, self.used = None, 0


class BlobStats:
    """absmax and a histogram of |x| (zeros excluded) over every value seen, in one pass.

    Values are buffered and enter the histogram in batches, so a small blob per
    chunk costs a copy into a buffer rather than several numpy calls.
    """

    _FLUSH_AT = 1 << 14

    def __init__(self, fine_bins: int = NUM_BINS * FINE_FACTOR):
        self.fine_bins = fine_bins
        self._absmax = 0.0
        self.range = 0.0  # the histogram covers [0, range)
        self.hist = np.zeros(fine_bins, dtype=np.float64)  # counts; float so merged (re-binned) mass stays exact
        self._count = 0
        self._buffer = _Buffer()
        self._pending_size = 0
        self._repeated: list[tuple[np.ndarray, int]] = []  # (values, how many times they were seen)

    @property
    def absmax(self) -> float:
        self.flush()
        return self._absmax

    @property
    def count(self) -> int:
        self.flush()
        return self._count

    def add(self, x: np.ndarray, times: int = 1) -> None:
        """Count the values of ``x`` (``times`` times: the same as adding it ``times`` times, in one go)."""
        values = np.asarray(x, dtype=np.float32).ravel()
        if times != 1:
            # counted as ``times`` values each, so the batches flush where adding them one by one would: the
            # first flush fixes the histogram's starting range, and with it every later bin edge
            self._repeated.append((values.copy(), times))
            self._pending_size += values.size * times
        else:
            self._buffer.push(values)
            self._pending_size += values.size
        if self._pending_size >= self._FLUSH_AT:
            self.flush()

    def flush(self, release: bool = False) -> None:
        """Bin what is buffered; ``release``: also free the buffer (the file is done)."""
        if self._pending_size:
            self._flush()
        if release:
            self._buffer.release()

    def _flush(self) -> None:
        self._pending_size = 0
        repeated, self._repeated = self._repeated, []
        batch = self._buffer.take()
        parts = [(np.abs(batch, out=batch), 1)] if batch.size else []  # our own buffer: made absolute in place
        parts += [(np.abs(v), t) for v, t in repeated]
        parts = [(a, t) for a, t in parts if a.size]
        tops = [float(a.max()) for a, _ in parts]  # nan propagates through max, so this checks every value
        if not all(math.isfinite(t) for t in tops):
            raise CalibrationError("non-finite activations (inf/nan) in the fp32 model's output")
        top = max(tops, default=0.0)
        if top == 0.0:  # only zeros, which are not counted
            return
        if self.range == 0.0:
            self.range = top * (1 + 1e-6)
        while top >= self.range:  # double the range: merge pairs of bins into the lower half
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist[:] = 0
            self.hist[: merged.size] = merged
            self.range *= 2
        self._absmax = max(self._absmax, top)
        for a, times in parts:
            # zeros land in bin 0 and are taken out again: cheaper than filtering them out first
            # floor(min(x, N-1)) == min(floor(x), N-1) for x >= 0: clamp in float, then truncate
            x = a * np.float32(self.fine_bins / self.range)
            np.minimum(x, np.float32(self.fine_bins - 1), out=x)
            counts = np.bincount(x.astype(np.intp), minlength=self.fine_bins)
            nonzero = np.count_nonzero(a)
            counts[0] -= a.size - nonzero
            self.hist += counts if times == 1 else times * counts
            self._count += times * nonzero

    def merge(self, other: "BlobStats") -> None:
        """Add another file's statistics (ranges may differ: the smaller one is re-binned into the larger)."""
        self.flush()
        other.flush(release=True)
        if other._count == 0:
            return
        if self._count == 0:
            self._absmax, self.range, self.hist, self._count = other._absmax, other.range, other.hist.copy(), other._count
            return
        big, small = (self, other) if self.range >= other.range else (other, self)
        edges_small = np.linspace(0.0, small.range, small.fine_bins + 1)
        cum = np.concatenate([[0.0], np.cumsum(small.hist, dtype=np.float64)])
        edges_big = np.linspace(0.0, big.range, big.fine_bins + 1)
        moved = np.diff(np.interp(edges_big, edges_small, cum))
        self.hist, self.range = big.hist + moved, big.range
        self._absmax = max(self._absmax, other._absmax)
        self._count += other._count

    def to_arrays(self) -> dict:
        self.flush()
        return {"absmax": np.float64(self._absmax), "range": np.float64(self.range), "hist": self.hist,
                "count": np.int64(self._count)}

    @classmethod
    def from_arrays(cls, d) -> "BlobStats":
        stats = cls(len(d["hist"]))
        stats._absmax, stats.range, stats._count = float(d["absmax"]), float(d["range"]), int(d["count"])
        stats.hist = np.asarray(d["hist"], dtype=np.float64).copy()
        return stats

    def histogram(self, bins: int = NUM_BINS) -> np.ndarray:
        """The counts re-binned to ``bins`` equal bins over exactly [0, absmax]."""
        self.flush()
        if self._absmax == 0.0:
            return np.zeros(bins)
        fine_edges = np.linspace(0.0, self.range, self.fine_bins + 1)
        cum = np.concatenate([[0.0], np.cumsum(self.hist, dtype=np.float64)])
        edges = np.linspace(0.0, self._absmax, bins + 1)
        out = np.diff(np.interp(edges, fine_edges, cum))
        out[-1] += cum[-1] - out.sum()  # the fine bin holding absmax spills past it: that mass is <= absmax
        return out


class RecordBudget:
    """How many bytes of activations the first pass of the two-pass mode may keep for the second (shared by
    every blob of every file). Once a file does not fit, nothing more is kept: that file and every later one
    run through the model again in the second pass."""

    def __init__(self, nbytes: int):
        self.left = int(nbytes)
        self.over = nbytes <= 0

    def take(self, nbytes: int) -> bool:
        if self.over or nbytes > self.left:
            self.over = True
            return False
        self.left -= nbytes
        return True

    def give(self, nbytes: int) -> None:
        self.left += nbytes


class ExactStats:
    """ncnn's histogram: counts in exactly ``bins`` bins over [0, absmax], where absmax is the whole calibration
    set's (the first pass's), binned as ncnn bins them (float32 ``min(int(|x| / absmax * bins), bins - 1)``,
    zeros left out).

    Until ``set_absmax`` the values are kept (``record``: a RecordBudget; when it runs out they are dropped,
    ``forgotten`` is set and only the largest |x| seen, ``seen``, survives). So the first pass can keep the
    activations it saw and the second bin them without running the model again.
    """

    _FLUSH_AT = 1 << 14

    def __init__(self, absmax: float | None = None, bins: int = NUM_BINS, record: RecordBudget | None = None):
        self.bins = bins
        self._absmax = None if absmax is None else float(absmax)
        self.hist = np.zeros(bins, dtype=np.int64)
        self._count = 0
        self._seen = 0.0
        self._buffer = _Buffer()
        self._held: list[tuple[np.ndarray, int]] = []  # (|values| batch, times) kept until the absmax is known
        self._held_bytes = 0
        self.record = record
        self.forgotten = False

    def set_absmax(self, absmax: float) -> None:
        if self.forgotten:
            raise ValueError("these statistics dropped their values; run the file again")
        self._absmax = float(absmax)
        self.flush()

    @property
    def absmax(self) -> float:
        """The range the histogram covers (0.0 until it is known)."""
        return 0.0 if self._absmax is None else self._absmax

    @property
    def seen(self) -> float:
        """The largest |x| added so far (what the first pass reports)."""
        self.flush()
        return self._seen

    @property
    def count(self) -> int:
        self.flush()
        return self._count

    def add(self, x: np.ndarray, times: int = 1) -> None:
        values = np.asarray(x, dtype=np.float32).ravel()
        if times != 1:
            self._batch(np.abs(values), times)
            return
        self._buffer.push(values)
        if self._buffer.used >= self._FLUSH_AT:
            self.flush()

    def flush(self, release: bool = False) -> None:
        if self._buffer.used:
            batch = self._buffer.take()
            self._batch(np.abs(batch, out=batch), 1, copy=True)
        if self._absmax is not None and self._held:
            held, self._held = self._held, []
            self._give_back()
            for values, times in held:
                self._bin(values, times)
        if release:
            self._buffer.release()

    def forget(self) -> None:
        """Drop the kept values (their bytes go back to the budget); ``seen`` stays."""
        self.flush()
        self._held = []
        self._give_back()
        self.forgotten = True

    def _give_back(self) -> None:
        if self.record is not None:
            self.record.give(self._held_bytes)
        self._held_bytes = 0

    def _batch(self, a: np.ndarray, times: int, copy: bool = False) -> None:
        """|values| that arrived: binned now when the absmax is known, else counted in ``seen`` and kept."""
        if not a.size:
            return
        top = float(a.max())
        if not math.isfinite(top):  # nan propagates through max, so this checks every value
            raise CalibrationError("non-finite activations (inf/nan) in the fp32 model's output")
        self._seen = max(self._seen, top)
        if self._absmax is not None:
            self._bin(a, times)
        elif not self.forgotten:
            if self.record is None or self.record.take(a.nbytes):
                self._held.append((a.copy() if copy else a, times))
                self._held_bytes += a.nbytes
            else:
                self.forget()

    def _bin(self, a: np.ndarray, times: int) -> None:
        a = a[a != 0]
        if not a.size:
            return
        top = float(a.max())
        if self._absmax <= 0 or top > self._absmax:
            raise CalibrationError(f"a value of {top} is beyond the first pass's absmax "
                                   f"{self._absmax}: the two passes saw different activations")
        x = a / np.float32(self._absmax)
        x *= np.float32(self.bins)
        idx = np.minimum(x.astype(np.intp), self.bins - 1)
        self.hist += times * np.bincount(idx, minlength=self.bins)
        self._count += times * a.size

    def merge(self, other: "ExactStats") -> None:
        self.flush()
        other.flush(release=True)
        if other._held:
            raise ValueError("merge needs both histograms binned (set_absmax first)")
        self.hist += other.hist
        self._count += other._count
        self._seen = max(self._seen, other._seen)

    def to_arrays(self) -> dict:
        self.flush()
        return {"exact": np.int64(1), "absmax": np.float64(self.absmax), "seen": np.float64(self._seen),
                "hist": self.hist, "count": np.int64(self._count)}

    @classmethod
    def from_arrays(cls, d) -> "ExactStats":
        absmax = float(d["absmax"])
        stats = cls(absmax if absmax > 0 else None, len(d["hist"]))
        stats.hist = np.asarray(d["hist"], dtype=np.int64).copy()
        stats._count, stats._seen = int(d["count"]), float(d["seen"])
        return stats

    def histogram(self, bins: int = NUM_BINS) -> np.ndarray:
        self.flush()
        if bins != self.bins:
            raise ValueError(f"an exact histogram has {self.bins} bins, not {bins}")
        return self.hist.astype(np.float64)


def kl_threshold_bin(hist: np.ndarray, target_bins: int = TARGET_BINS, eps: float = KL_EPS) -> int:
    """ncnn's KL search: the number of bins to keep (target_bins .. len(hist)-1) with the least divergence.

    For a candidate t, P is the normalised histogram of the first t bins with
    everything above folded into bin t-1, Q is that range squeezed into
    ``target_bins`` equal (fractional) bins and spread back evenly; both get
    ``eps`` per bin. The first candidate with the least divergence wins.

    Every candidate's divergence is computed at once by ``_kl_all`` (equal to
    the per-candidate formula ``_kl_one`` up to rounding, ~1e-13); the
    candidates within a margin far above that rounding of the least one are
    then re-scored with ``_kl_one`` in order, so the chosen bin is exactly the
    one the candidate-by-candidate search picks.
    """
    n = hist.size
    total = float(hist.sum())
    if total <= 0:
        return n - 1
    if n <= target_bins:
        return target_bins
    kl = _kl_all(hist, target_bins, eps)
    best = float(kl.min())
    close = np.flatnonzero(kl <= best + _KL_MARGIN * max(1.0, abs(best))) + target_bins
    prep = _kl_prepare(hist, target_bins, eps)
    best_t, best_kl = target_bins, math.inf
    for t in close:
        value = _kl_one(prep, int(t), target_bins, eps)
        if value < best_kl:
            best_kl, best_t = value, int(t)
    return best_t


_KL_MARGIN = 1e-7  # >> the ~1e-13 by which _kl_all and _kl_one differ (pinned by tests/core/int8/test_calibrate.py)


def _kl_prepare(hist: np.ndarray, target_bins: int, eps: float) -> tuple:
    n = hist.size
    h = hist.astype(np.float64) / float(hist.sum())
    cum = np.concatenate([[0.0], np.cumsum(h)])
    positions = np.arange(n + 1, dtype=np.float64)
    plogp = np.concatenate([[0.0], np.cumsum((h + eps) * np.log(h + eps))])
    coarse = np.arange(target_bins + 1, dtype=np.float64)
    return h, cum, positions, plogp, coarse


def _kl_one(prep: tuple, t: int, target_bins: int = TARGET_BINS, eps: float = KL_EPS) -> float:
    """The divergence of candidate t, straight from the definition. The integral of the spread-back density
    at integer points is the linear interpolation of the cumulative histogram at the coarse bin edges."""
    h, cum, positions, plogp, coarse = prep
    edges = coarse * (t / target_bins)
    c_edges = np.interp(edges, positions, cum)
    spread = np.interp(positions[: t + 1], edges, c_edges)
    q = np.diff(spread) + eps
    last = h[t - 1] + eps + (1.0 - cum[t])
    # sum over the first t-1 bins of p*log(p) comes from the prefix sums; the last bin holds the outliers
    p_log_p = plogp[t - 1] + last * math.log(last)
    p = h[:t] + eps
    p[-1] = last
    return p_log_p - float(np.dot(p, np.log(q)))


def _kl_all(hist: np.ndarray, target_bins: int = TARGET_BINS, eps: float = KL_EPS) -> np.ndarray:
    """kl_threshold_bin's divergence for every candidate t (index t - target_bins), all at once.

    Inside one coarse bin the spread-back density is constant, so sum p*log(q)
    over the whole bins a coarse bin covers is (prefix sum of p) * log(density):
    O(target_bins) per candidate. The at most target_bins-1 fine bins that
    straddle a coarse edge get their two-part q explicitly; the last fine bin
    (which holds the outliers) is corrected separately. Candidates go in blocks
    of _KL_BLOCK, so the temporaries stay a few MB whatever the histogram size.
    """
    n = hist.size
    h = hist.astype(np.float64) / float(hist.sum())
    cum = np.concatenate([[0.0], np.cumsum(h)])
    plogp = np.concatenate([[0.0], np.cumsum((h + eps) * np.log(h + eps))])
    pre = np.concatenate([[0.0], np.cumsum(h + eps)])  # prefix sums of p before the last-bin correction
    p_ext = np.append(h + eps, 0.0)
    lo_all, rem_all = _kl_grid(n, target_bins)
    out = np.empty(n - target_bins)
    for start in range(0, out.size, _KL_BLOCK):
        stop = min(start + _KL_BLOCK, out.size)
        g = _grid_block(n, target_bins, start, lo_all[start:stop], rem_all[start:stop])
        c_edge = cum[g.lo] + g.frac * h[g.lo_c]  # the cumulative histogram at the coarse edges
        dens = np.diff(c_edge, axis=1) / g.width  # (candidates, target_bins): mass per unit length
        logq_full = np.log(dens + eps)
        # fine bins entirely inside coarse bin k: ceil(e_k) .. floor(e_{k+1}) - 1
        s = np.einsum("ij,ij->i", pre[g.lo_next] - pre[g.ceil_lo_prev], logq_full)
        # fine bins straddling an inner edge e_k (k = 1 .. target_bins-1); where e_k is an integer there is
        # none: its index points at an extra p = 0 entry (p * log(q) is then 0, q > 0)
        q_s = dens[:, :-1] * g.f_in + dens[:, 1:] * (1.0 - g.f_in)
        q_s += eps
        s += np.einsum("ij,ij->i", p_ext[g.straddle_idx], np.log(q_s))
        tt = g.tt
        last = h[tt - 1] + eps + (1.0 - cum[tt])
        s += (last - (h[tt - 1] + eps)) * logq_full[:, -1]  # the last fine bin lies inside the last coarse bin
        out[start:stop] = plogp[tt - 1] + last * np.log(last) - s
    return out


_KL_BLOCK = 128  # candidates scored together: ~20 temporaries of _KL_BLOCK x target_bins float64 (~130 kB each)


@dataclass(frozen=True)
class _Grid:
    tt: np.ndarray
    lo: np.ndarray
    lo_c: np.ndarray
    frac: np.ndarray
    width: np.ndarray
    lo_next: np.ndarray
    ceil_lo_prev: np.ndarray
    f_in: np.ndarray
    straddle_idx: np.ndarray


@functools.lru_cache(maxsize=4)
def _kl_grid(n: int, target_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Where candidate t's coarse edges e_j = j*t/target_bins fall among the fine bins (exact, integer maths):
    floor(e_j) and the remainder j*t mod target_bins, compact (int32/int16: ~1.5 MB kept for 2048 bins)."""
    tt = np.arange(target_bins, n, dtype=np.int32)
    num = np.arange(target_bins + 1, dtype=np.int32)[None, :] * tt[:, None]  # < 2**31 for any real histogram
    lo = num // target_bins
    num -= lo * target_bins
    return lo, num.astype(np.int16)


def _grid_block(n: int, target_bins: int, start: int, lo: np.ndarray, rem: np.ndarray) -> _Grid:
    """The indices and fractions _kl_all needs for candidates target_bins+start ...; from the compact grid."""
    tt = np.arange(target_bins + start, target_bins + start + lo.shape[0], dtype=np.int64)
    lo = lo.astype(np.intp)
    frac = rem.astype(np.float64) / target_bins  # e_j - floor(e_j)
    ceil_lo = lo + (rem > 0)
    lo_c = np.minimum(lo, n - 1)
    straddle_idx = np.where(rem[:, 1:-1] > 0, lo_c[:, 1:-1], n)
    return _Grid(tt, lo, lo_c, frac, (tt.astype(np.float64) / target_bins)[:, None], lo[:, 1:], ceil_lo[:, :-1],
                 frac[:, 1:-1], straddle_idx)


@dataclass
class ActivationScale:
    layer: str
    absmax: float
    threshold: float
    scale: float
    clipped_by_kl: float = 0.0  # share of the values KL's threshold would have clipped, when the guard overrode it


# KL divergence picks a threshold that fits the bulk of the histogram; on a bimodal input (most values near 0, a
# real second mode far out: icefall's subsampling convolutions, seen on 5 of 29 real configurations) it cuts the
# second mode off and the int8 encoder's cosine falls to 0.45-0.97. When KL's threshold would clip more than this
# share of the values, the layer keeps its whole range (threshold = absmax), which restored 0.998-0.9999 there.
KL_CLIP_LIMIT = 0.01

# The joiner's inputs keep their whole range (threshold = absmax; KL is for the encoder). Measured on the trained
# demos (20 held-out utterances; int8 joiner vs fp32, worst frame's cosine, LSTM / ConvEmformer / Zipformer): KL
# thresholds 0.99616 / 0.95068 / 0.99237; generate-int8-scale-table's statistics (each chunk's first frame for every
# frame, blank 0 only) 0.99616 / 0.99837 / 0.99992; whole range 0.99993 / 0.99998 / 0.99995, mean 1.00000 on all
# three. The joiner decides every token from a few small vectors: clipping them costs more than coarser steps.
JOINER_KEEPS_RANGE = True


def activation_scale(layer: str, stats: BlobStats, clip: bool = True) -> ActivationScale:
    """The layer's input scale: KL's threshold (``clip``) unless that clips too much, else the whole range."""
    if stats.absmax <= 0 or stats.count == 0:
        raise CalibrationError(f"layer {layer!r}: its input was zero on every calibration chunk (a dead "
                               "activation); add more or longer calibration audio, or leave this layer in float")
    threshold, clipped = stats.absmax, 0.0
    if clip:
        hist = stats.histogram()
        t = kl_threshold_bin(hist)
        threshold = (t + 0.5) * stats.absmax / NUM_BINS
        total = float(hist.sum())
        clipped = float(hist[t + 1:].sum()) / total if total > 0 else 0.0
    if clipped > KL_CLIP_LIMIT:
        threshold = stats.absmax
    scale = 127.0 / threshold
    if not math.isfinite(scale) or scale <= 0:
        raise CalibrationError(f"layer {layer!r}: activation scale {scale} is not usable")
    return ActivationScale(layer, stats.absmax, threshold, scale, clipped if clipped > KL_CLIP_LIMIT else 0.0)


def weight_scales(layer: str, weights: np.ndarray, rows: int, six_bit: bool = False) -> np.ndarray:
    """Per output channel (or group) ``127/absmax`` (``31/absmax`` for ncnn's 3x3 winograd int8 path)."""
    w = np.asarray(weights, dtype=np.float32).reshape(rows, -1)
    absmax = np.abs(w).max(axis=1)
    dead = np.flatnonzero(absmax == 0)
    if dead.size:
        raise CalibrationError(f"layer {layer!r}: output channel(s) {dead[:5].tolist()} have all-zero weights, "
                               "which would give an infinite scale; leave this layer in float")
    if not np.isfinite(absmax).all():
        raise CalibrationError(f"layer {layer!r}: weights contain inf/nan")
    return (31.0 if six_bit else 127.0) / absmax


@dataclass
class ScaleTable:
    """One net's table: weight scales per quantizable layer, then one activation scale per layer."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    activations: dict[str, ActivationScale] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"{name}_param_0 " + "".join(f"{s:f} " for s in scales) for name, scales in self.weights.items()]
        lines += [f"{name} {a.scale:f} " for name, a in self.activations.items()]
        return "".join(line + "\n" for line in lines)


def read_table(text: str, source: str = "table") -> ScaleTable:
    """Parse an ncnn scale table, refusing inf/nan/zero/negative scales with the line number."""
    table = ScaleTable()
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        name, values = parts[0], parts[1:]
        try:
            scales = np.array([float(v) for v in values], dtype=np.float64)
        except ValueError:
            raise CalibrationError(f"{source}:{number}: {line.strip()[:60]!r} is not 'name scale ...'") from None
        if scales.size == 0 or not np.isfinite(scales).all() or (scales <= 0).any():
            raise CalibrationError(f"{source}:{number}: layer {name!r} has an unusable scale (inf, nan, zero or "
                                   "negative); recalibrate, or drop the line to keep that layer in float")
        if "_param_" in name:
            table.weights[name.rsplit("_param_", 1)[0]] = scales
        else:
            table.activations[name] = ActivationScale(name, float("nan"), 127.0 / scales[0], float(scales[0]))
    return table
