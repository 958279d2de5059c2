"""Calibration maths: the KL threshold search, one-pass histograms, weight scales, the table format."""
import math

import numpy as np
import pytest

from core.int8.calibrate import (BlobStats, CalibrationError, ScaleTable, activation_scale, kl_threshold_bin,
                            read_table, weight_scales)
from tests.paths import TESTS


def reference_kl_bin(hist, target, eps=1e-4):
    """ncnn's search written out plainly: fractional bin overlaps, loop by loop."""
    h = hist / hist.sum()
    n = len(h)

    def mass(a, b):  # histogram mass over [a, b), linear inside a bin
        total = 0.0
        for k in range(int(math.floor(a)), int(math.ceil(b))):
            lo, hi = max(a, k), min(b, k + 1)
            if hi > lo:
                total += h[k] * (hi - lo)
        return total

    best_t, best = target, math.inf
    for t in range(target, n):
        p = [h[k] + eps for k in range(t)]
        p[-1] += sum(h[t:])
        width = t / target
        density = [mass(j * width, (j + 1) * width) / width for j in range(target)]
        q = []
        for k in range(t):
            v = eps
            for j in range(target):
                lo, hi = max(k, j * width), min(k + 1, (j + 1) * width)
                if hi > lo:
                    v += density[j] * (hi - lo)
            q.append(v)
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        if kl < best:
            best, best_t = kl, t
    return best_t


@pytest.mark.parametrize("seed", range(4))
def test_kl_search_matches_the_plain_algorithm(seed):
    rng = np.random.default_rng(seed)
    values = np.abs(rng.standard_normal(5000) * rng.uniform(0.2, 3)) ** rng.uniform(0.5, 2)
    hist, _ = np.histogram(values, bins=96, range=(0, values.max()))
    assert kl_threshold_bin(hist.astype(float), target_bins=16) == reference_kl_bin(hist.astype(float), 16)


def test_one_pass_histogram_matches_a_two_pass_one():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(4000) * s for s in (0.1, 0.5, 3.0, 1.0, 7.0)]  # the range grows twice or more
    stats = BlobStats()
    for b in batches:
        stats.add(b)
    everything = np.abs(np.concatenate(batches))
    assert stats.absmax == pytest.approx(everything.max())
    exact, _ = np.histogram(everything, bins=2048, range=(0, everything.max()))
    approx = stats.histogram()
    assert approx.sum() == pytest.approx(exact.sum())
    # re-binning moves mass by less than one output bin: compare at 64-bin resolution
    assert np.abs(approx.reshape(64, -1).sum(1) - exact.reshape(64, -1).sum(1)).sum() / exact.sum() < 0.01


def test_zeros_are_excluded_and_dead_inputs_refused():
    stats = BlobStats()
    stats.add(np.zeros(100))
    with pytest.raises(CalibrationError, match="'linear_3'.*zero on every calibration chunk"):
        activation_scale("linear_3", stats)
    stats.add(np.array([0.0, 0.5, -1.0]))
    assert stats.count == 2


def test_non_finite_activations_are_refused():
    stats = BlobStats()
    stats.add(np.array([1.0, np.inf]))  # buffered; reported when the statistics are used
    with pytest.raises(CalibrationError, match="inf/nan"):
        stats.histogram()


def test_activation_scale_is_127_over_the_threshold():
    rng = np.random.default_rng(1)
    stats = BlobStats()
    stats.add(rng.standard_normal(100_000))
    a = activation_scale("x", stats)
    assert 0 < a.threshold <= a.absmax
    assert a.scale == pytest.approx(127 / a.threshold)


def test_without_clipping_the_threshold_is_the_whole_range():
    rng = np.random.default_rng(1)
    stats = BlobStats()
    stats.add(rng.standard_normal(100_000))
    kl, whole = activation_scale("x", stats), activation_scale("x", stats, clip=False)
    assert kl.threshold < whole.threshold == whole.absmax  # KL cuts a normal's tails; the joiner's way keeps them
    assert whole.scale == pytest.approx(127 / whole.absmax) and whole.clipped_by_kl == 0.0


def test_weight_scales_per_output_channel():
    w = np.array([[0.5, -1.0], [2.0, 0.1], [-0.25, 0.0]])
    assert weight_scales("l", w, 3) == pytest.approx([127.0, 63.5, 508.0])
    assert weight_scales("l", w, 3, six_bit=True) == pytest.approx([31.0, 15.5, 124.0])
    with pytest.raises(CalibrationError, match=r"'conv_1'.*channel\(s\) \[1\]"):
        weight_scales("conv_1", np.array([[1.0, 2.0], [0.0, 0.0]]), 2)


def test_table_text_is_ncnns_format_and_reads_back():
    t = ScaleTable()
    t.weights["linear_1"] = np.array([1.5, 2.0])
    stats = BlobStats()
    stats.add(np.linspace(-2, 2, 1000))
    t.activations["linear_1"] = activation_scale("linear_1", stats)
    text = t.text()
    lines = text.splitlines()
    assert lines[0] == "linear_1_param_0 1.500000 2.000000 "
    assert lines[1].startswith("linear_1 ") and lines[1].endswith(" ")
    back = read_table(text)
    assert back.weights["linear_1"] == pytest.approx([1.5, 2.0])
    assert back.activations["linear_1"].scale == pytest.approx(t.activations["linear_1"].scale, rel=1e-5)


@pytest.mark.parametrize("bad", ["inf", "nan", "0", "-3", "x"])
def test_unusable_table_lines_are_refused_with_their_line(bad):
    with pytest.raises(CalibrationError, match=r"encoder-scale-table.txt:2"):
        read_table(f"linear_1_param_0 1.0 \nlinear_1 {bad} \n", "encoder-scale-table.txt")


def test_merging_per_file_statistics_matches_one_pass():
    rng = np.random.default_rng(3)
    files = [[rng.standard_normal(3000) * s for s in scales] for scales in ((0.2, 1.0), (5.0,), (0.05, 0.3, 2.0))]
    one = BlobStats()
    per_file = []
    for batches in files:
        f = BlobStats()
        for b in batches:
            one.add(b)
            f.add(b)
        per_file.append(f)
    merged = BlobStats()
    for f in per_file:
        merged.merge(BlobStats.from_arrays(f.to_arrays()))
    assert merged.count == one.count and merged.absmax == one.absmax
    a, b = merged.histogram(), one.histogram()
    assert a.sum() == pytest.approx(b.sum())
    assert np.abs(a.reshape(64, -1).sum(1) - b.reshape(64, -1).sum(1)).sum() / b.sum() < 0.01
    values = np.abs(np.concatenate([b for batches in files for b in batches]))
    exact, _ = np.histogram(values[values > 0], bins=2048, range=(0, one.absmax))
    t_exact = kl_threshold_bin(exact.astype(float))
    # the KL minimum is flat: both one-pass variants land within 2 % of the two-pass threshold
    assert abs(kl_threshold_bin(a) - t_exact) <= 41 and abs(kl_threshold_bin(b) - t_exact) <= 41


def _per_candidate_kl_bin(hist, target_bins=128, eps=1e-4):
    """The previous implementation: one candidate at a time (what kl_threshold_bin must keep choosing)."""
    from core.int8.calibrate import _kl_one, _kl_prepare
    prep = _kl_prepare(hist, target_bins, eps)
    best_t, best = target_bins, math.inf
    for t in range(target_bins, hist.size):
        kl = _kl_one(prep, t, target_bins, eps)
        if kl < best:
            best, best_t = kl, t
    return best_t


def _hists():
    rng = np.random.default_rng(7)
    out = []
    for k in range(8):
        if k % 4 == 0:
            v = np.abs(rng.standard_normal(200_000))
        elif k % 4 == 1:
            v = np.abs(rng.standard_t(2, 200_000))  # long tail: thresholds well below absmax
        elif k % 4 == 2:
            v = np.abs(rng.integers(0, 7, 5_000)).astype(float) + 1e-3  # spiky, mostly empty bins
        else:
            v = np.abs(rng.uniform(0, 1, 3000)) ** 4
        out.append(np.histogram(v, bins=2048, range=(0, v.max()))[0].astype(float))
    out.append(np.ones(2048))  # flat: many near-equal candidates
    out.append(np.zeros(2048) + np.eye(1, 2048, 1000)[0])  # a single spike
    return out


@pytest.mark.parametrize("k", range(10))
def test_all_candidates_at_once_equal_the_per_candidate_divergence(k):
    from core.int8.calibrate import _kl_all, _kl_one, _kl_prepare
    hist = _hists()[k]
    fast = _kl_all(hist)
    prep = _kl_prepare(hist, 128, 1e-4)
    slow = np.array([_kl_one(prep, t) for t in range(128, 2048)])
    assert np.abs(fast - slow).max() < 1e-10  # far inside the re-scoring margin (_KL_MARGIN = 1e-7)
    assert kl_threshold_bin(hist) == _per_candidate_kl_bin(hist)


def test_kl_threshold_that_would_clip_a_real_second_mode_keeps_the_whole_range():
    """The statistics of a real icefall ConvEmformer's subsampling convolution (conv_25 of a 3-layer model from the
    icefall matrix, random weights): KL picked 1.65 of 23.6 and clipped 13.7% of the values, and the int8 encoder's
    cosine fell to 0.446 (0.9985 with the whole range). The layer keeps its whole range; a unimodal input keeps KL's
    threshold."""
    from pathlib import Path
    arrays = np.load(TESTS / "fixtures" / "calibration" / "convemformer-subsampling-conv-stats.npz")
    real = BlobStats.from_arrays({k: arrays[k] for k in arrays.files})
    a = activation_scale("conv_25", real)
    assert a.threshold == pytest.approx(a.absmax) and a.clipped_by_kl > 0.1
    unimodal = BlobStats()
    unimodal.add(np.random.default_rng(0).normal(0, 1, 100_000).astype(np.float32))
    b = activation_scale("linear_1", unimodal)
    assert b.threshold < 0.99 * b.absmax and b.clipped_by_kl == 0.0
