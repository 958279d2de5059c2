"""The two-pass (ncnn's) histogram mode: exact 2048 bins over [0, absmax], the first pass's activations kept
within a budget, the mode chosen by config/child flag and reported back; and the buffers that keep no ncnn Mat."""
import numpy as np
import pytest

from core.int8.calibrate import (DEFAULT_HISTOGRAM, HISTOGRAM_MODES, NUM_BINS, BlobStats, CalibrationError,
                                 ExactStats, RecordBudget, kl_threshold_bin)


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    out = [(rng.standard_normal(n).astype(np.float32) * s, 1) for n, s in ((5000, 0.3), (20000, 2.0), (700, 5.0))]
    out[1][0][:1000] = 0.0  # zeros are not counted
    out.append((rng.standard_normal(64).astype(np.float32), 7))  # a vector that served 7 frames
    return out


def _brute_force(batches, absmax):
    """Every value binned on its own as ncnn does (float32 |x| / absmax * 2048, truncated, last bin clamps)."""
    hist = np.zeros(NUM_BINS, np.int64)
    for values, times in batches:
        for v in np.abs(values[values != 0]).astype(np.float32):
            k = int(np.float32(np.float32(v / np.float32(absmax)) * np.float32(NUM_BINS)))
            hist[min(k, NUM_BINS - 1)] += times
    return hist


def test_two_pass_histogram_is_the_brute_force_2048_bins_over_0_absmax():
    batches = _batches()
    absmax = max(float(np.abs(v).max()) for v, _ in batches)
    stats = ExactStats(absmax)
    for values, times in batches:
        stats.add(values, times)
    expected = _brute_force(batches, absmax)
    got = stats.histogram()
    assert np.array_equal(got.astype(np.int64), expected)
    assert stats.count == int(expected.sum()) and stats.absmax == absmax
    # numpy's own histogram over [0, absmax] (float64 edges) agrees but for values within a float32 rounding of
    # an edge, which move to the neighbouring bin
    flat = np.concatenate([np.repeat(np.abs(v[v != 0])[None], t, 0).ravel() for v, t in batches])
    ref, _ = np.histogram(flat, bins=NUM_BINS, range=(0, absmax))
    assert ref.sum() == expected.sum() and np.abs(ref - expected).sum() <= 1e-3 * ref.sum()


def test_values_kept_until_the_absmax_is_known_bin_the_same():
    batches = _batches(1)
    later = ExactStats()  # the first pass: values kept, largest |x| seen
    for values, times in batches:
        later.add(values, times)
    absmax = later.seen
    assert absmax == max(float(np.abs(v).max()) for v, _ in batches)
    later.set_absmax(absmax)
    now = ExactStats(absmax)
    for values, times in batches:
        now.add(values, times)
    assert np.array_equal(later.histogram(), now.histogram()) and later.count == now.count


def test_the_record_budget_drops_values_keeps_the_absmax_and_gives_the_bytes_back():
    budget = RecordBudget(200_000)  # 50k float32 values between all blobs
    a, b = ExactStats(record=budget), ExactStats(record=budget)
    a.add(np.full(30_000, 0.5, np.float32))
    a.flush()
    assert not a.forgotten and budget.left == 200_000 - 120_000
    b.add(np.linspace(-3, 3, 30_000, dtype=np.float32))
    b.flush()  # does not fit: dropped, and nothing more is kept from now on
    assert b.forgotten and b.seen == pytest.approx(3.0) and budget.over
    a.forget()
    assert budget.left == 200_000
    with pytest.raises(ValueError, match="run the file again"):
        b.set_absmax(3.0)


def test_exact_statistics_survive_the_cache_format():
    s = ExactStats(2.0)
    s.add(np.array([0.5, -1.5, 0.0, 2.0], np.float32))
    back = ExactStats.from_arrays(s.to_arrays())
    assert np.array_equal(back.histogram(), s.histogram()) and back.count == 3 and back.absmax == 2.0


def test_buffered_values_are_copies_not_views_of_the_caller_array():
    """ncnn reuses a Mat's memory once it is released: the statistics must not read it later."""
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    one, exact = BlobStats(), ExactStats(1.0)
    one.add(x)
    exact.add(x)
    x[:] = 50.0  # the caller's buffer is overwritten before the statistics flush
    assert one.absmax == pytest.approx(1.0) and exact.count == 1000 - np.count_nonzero(x == 0)


def test_kl_search_in_blocks_gives_the_same_divergences(monkeypatch):
    import core.int8.calibrate as c
    rng = np.random.default_rng(5)
    hist = np.histogram(np.abs(rng.standard_t(3, 50_000)), bins=NUM_BINS)[0].astype(float)
    whole = c._kl_all(hist)
    monkeypatch.setattr(c, "_KL_BLOCK", 37)  # blocks that do not divide the candidates
    assert np.allclose(c._kl_all(hist), whole, rtol=0, atol=1e-12)
    assert kl_threshold_bin(hist) == int(np.argmin(whole)) + c.TARGET_BINS


def test_an_unknown_mode_is_refused_naming_the_setting(tmp_path):
    from core.int8.calibration import ModelFiles, calibrate
    files = ModelFiles(*(tmp_path / f"missing-{i}" for i in range(6)))
    with pytest.raises(CalibrationError, match="histogram = 'exact' is not one of one-pass, two-pass"):
        calibrate(files, [], histogram="exact")


def test_the_config_key_takes_only_the_two_modes_and_names_itself():
    from core.pipeline.config import HISTOGRAM_MODES as CONFIG_MODES
    from core.pipeline.config import ConfigError, config_from_dict
    assert CONFIG_MODES == HISTOGRAM_MODES
    for mode in HISTOGRAM_MODES:
        assert config_from_dict({"arch": "lstm", "calibration": {"histogram": mode}}).calibration.histogram == mode
    assert config_from_dict({"arch": "lstm"}).calibration.histogram == DEFAULT_HISTOGRAM
    for bad in ("2pass", "", 2):
        with pytest.raises(ConfigError, match=r"calibration\.histogram"):
            config_from_dict({"arch": "lstm", "calibration": {"histogram": bad}})


def test_the_child_refuses_an_unknown_mode_and_defaults_to_the_default(capsys):
    from core.int8 import children
    with pytest.raises(SystemExit) as exc:
        children.main(["calibrate", "--files", *"abcdef", "--tables", "x", "y", "--histogram", "exact"])
    assert exc.value.code == 2 and "invalid choice: 'exact'" in capsys.readouterr().err


# -- on a real (demo) model -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_both_modes_run_and_report_themselves(fp32_model, monkeypatch, tmp_path):
    import core.int8.calibration as run
    from core.int8.children import calibrate_in_child
    from core.pipeline.demo import demo_recipe
    wavs = demo_recipe("lstm").test_wavs
    one = run.calibrate(fp32_model, wavs, workers=1, histogram="one-pass")
    two = run.calibrate(fp32_model, wavs, workers=1, histogram="two-pass")
    assert (one.histogram, two.histogram) == ("one-pass", "two-pass")
    for a, b in ((one.encoder, two.encoder), (one.joiner, two.joiner)):
        assert a.text().split("\n")[: len(a.weights)] == b.text().split("\n")[: len(b.weights)]  # same weights
        for layer in a.activations:  # same data, so the same absmax; thresholds from different histograms
            assert b.activations[layer].absmax == a.activations[layer].absmax
    # the first pass's activations kept (the default budget) or not at all: the same tables
    monkeypatch.setattr(run, "RECORD_BYTES", 0)
    again = run.calibrate(fp32_model, wavs, workers=1, histogram="two-pass", cache_dir=tmp_path / "cache")
    assert again.encoder.text() == two.encoder.text() and again.joiner.text() == two.joiner.text()
    cached = run.calibrate(fp32_model, wavs, workers=1, histogram="two-pass", cache_dir=tmp_path / "cache")
    assert cached.encoder.text() == two.encoder.text()
    child = calibrate_in_child(fp32_model, wavs, histogram="one-pass")
    assert child.histogram == "one-pass" and child.encoder.text() == one.encoder.text()


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    from tests.core.int8.test_calibration_run import fp32_model as build
    return build.__wrapped__(tmp_path_factory)


def test_run_and_calibrate_take_the_mode_as_a_flag(tmp_path):
    from tui.cli.main import build_parser
    from tui.cli.run import inapplicable_flags, load_run_config
    parser = build_parser()
    args = parser.parse_args(["run", "--demo", "lstm", "--int8", "--histogram", "two-pass"])
    config = load_run_config(args)
    assert config.calibration.histogram == "two-pass" and inapplicable_flags(args, config) == ([], [])
    args = parser.parse_args(["run", "--demo", "lstm", "--histogram", "two-pass"])
    assert "--histogram ignored" in inapplicable_flags(args, load_run_config(args))[1][0]
    assert parser.parse_args(["calibrate", str(tmp_path), "--histogram", "one-pass"]).histogram == "one-pass"
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", str(tmp_path), "--histogram", "exact"])
