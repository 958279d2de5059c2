"""Where int8 clips: calibration keeps the histograms of the most-clipped layers, the summary draws them.

The selection runs on real BlobStats and real activation_scale thresholds (KL and its guard), so the shares it
ranks are the ones the scale table was made with; the chart is checked cell by cell.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.common.charts import histogram_chart
from core.int8.calibrate import KL_CLIP_LIMIT, BlobStats, ScaleTable, activation_scale
from core.int8.histograms import BUCKETS, HISTOGRAMS, clipped_share, document, read_layers, worst_layers
from tests.paths import TESTS


def _layer(counts, absmax=9.8, threshold=3.21, clipped=0.004, **extra):
    return dict({"net": "encoder", "layer": "conv_5", "absmax": absmax, "threshold": threshold,
                 "clipped": clipped, "clipped_by_kl": 0.0, "counts": counts}, **extra)


def test_the_marker_sits_under_the_threshold_bucket_and_the_chart_fits_80_columns():
    counts = [0.0] * BUCKETS
    counts[0], counts[3], counts[40] = 1e6, 10.0, 1.0
    lines = histogram_chart(_layer(counts))
    assert lines[0] == "  encoder conv_5"
    spark, marker, said = lines[1][2:], lines[2][2:], lines[3]
    assert len(spark) == BUCKETS and spark[0] == "█" and spark[1] == " " and spark[40] == "▁"  # log-scaled
    assert "▁" < spark[3] < "█"
    assert marker.index("▲") == int(3.21 / 9.8 * BUCKETS) == 20
    assert said == "  threshold 3.21 of absmax 9.80 (clips 0.4%)"
    assert all(len(line) <= 80 for line in lines)


def test_more_buckets_than_cells_are_summed_and_the_marker_follows():
    counts = [1.0] * 256
    lines = histogram_chart(_layer(counts, absmax=1.0, threshold=0.5), width=76)
    assert len(lines[1]) - 2 == 64 and lines[2].index("▲") - 2 == 32
    assert all(len(line) <= 80 for line in lines)


def test_a_layer_whose_kl_threshold_the_guard_overrode_says_so():
    lines = histogram_chart(_layer([1.0] * BUCKETS, threshold=9.8, clipped=0.0, clipped_by_kl=0.03))
    assert lines[2].index("▲") - 2 == BUCKETS - 1
    assert "= absmax" in lines[3] and "3.0%" in lines[3] and len(lines[3]) <= 80


def _stats(values: np.ndarray) -> BlobStats:
    st = BlobStats()
    st.add(values.astype(np.float32))
    return st


def test_the_selection_keeps_the_most_clipped_layers_first_with_the_guarded_one():
    rng = np.random.default_rng(0)
    n = 200_000
    heavy = rng.standard_t(2, n)  # a long tail: KL clips a real share
    gauss = rng.standard_normal(n)
    uniform = rng.uniform(-1, 1, n)  # nothing worth clipping
    blobs = {"b_heavy": heavy, "b_gauss": gauss, "b_uniform": uniform,
             "b_laplace": rng.laplace(0, 1, n), "b_outlier": np.append(gauss[:50_000], 40.0)}
    stats = {b: _stats(v) for b, v in blobs.items()}
    # a real icefall subsampling convolution's statistics (tests/core/int8/test_calibrate.py): KL would cut its second mode
    arrays = np.load(TESTS / "fixtures" / "calibration" / "convemformer-subsampling-conv-stats.npz")
    stats["b_bimodal"] = BlobStats.from_arrays({k: arrays[k] for k in arrays.files})
    bottoms = {name.replace("b_", "layer_"): name for name in stats}
    table = ScaleTable(activations={layer: activation_scale(layer, stats[blob]) for layer, blob in bottoms.items()})
    joiner_stats = {"j": _stats(heavy)}
    joiner = ScaleTable(activations={"joiner_linear": activation_scale("joiner_linear", joiner_stats["j"], False)})

    worst = worst_layers({"encoder": (table, bottoms, stats), "joiner": (joiner, {"joiner_linear": "j"},
                                                                            joiner_stats)}, keep=4)

    assert table.activations["layer_bimodal"].clipped_by_kl > KL_CLIP_LIMIT  # the guard kept its range
    score = {}
    for layer, blob in bottoms.items():
        a = table.activations[layer]
        share = clipped_share(stats[blob].histogram(), a.absmax, a.threshold)
        if blob in blobs:
            raw = float((np.abs(blobs[blob]) > a.threshold).mean())  # from the values, not the bins
            assert abs(share - raw) < 2e-3, layer
        score[layer] = max(share, a.clipped_by_kl)
    expected = sorted((s, name) for name, s in score.items() if s > 0)[::-1][:4]
    assert [w["layer"] for w in worst] == [name for _, name in expected]
    assert "layer_bimodal" in [w["layer"] for w in worst]
    assert all(w["net"] == "encoder" for w in worst)  # the joiner keeps its range: it clips nothing
    for w in worst:
        assert len(w["counts"]) == BUCKETS
        assert abs(sum(w["counts"]) - stats[bottoms[w["layer"]]].count) < 1
    back = read_layers(json.loads(json.dumps(document(worst))))
    assert [w["layer"] for w in back] == [w["layer"] for w in worst]


def test_reading_leaves_out_entries_a_chart_cannot_use():
    good = _layer([1.0] * BUCKETS)
    assert read_layers({"layers": [good, {"layer": "x"}, dict(good, threshold=20.0), dict(good, counts=[])]}) \
        == [good]
    assert read_layers({}) == []


@pytest.mark.slow
def test_a_calibration_in_the_child_writes_the_histograms_beside_the_tables(tmp_path):
    """Real ncnn on the kit's 1,2,1 Zipformer (made sherpa-ready as tests/core/ncnn/test_ncnn_isolation.py does)."""
    from core.int8.children import calibrate_in_child
    from core.pipeline.demo import demo_recipe
    from tests.core.ncnn.test_ncnn_isolation import ONE_LAYER, _files, _model
    if not ONE_LAYER.is_dir():
        pytest.skip(f"the icefall kit is not at {ONE_LAYER}")
    files = _files(_model(tmp_path / "model", crash=False))
    result = calibrate_in_child(files, demo_recipe("lstm").test_wavs[:2],
                                tables=(tmp_path / "encoder-scale-table.txt", tmp_path / "joiner-scale-table.txt"))
    layers = read_layers(json.loads((tmp_path / HISTOGRAMS).read_text()))
    assert 0 < len(layers) <= 4
    for layer in layers:
        a = (result.encoder if layer["net"] == "encoder" else result.joiner).activations[layer["layer"]]
        assert np.isclose(layer["threshold"], a.threshold) and len(layer["counts"]) == BUCKETS
        assert all(len(line) <= 80 for line in histogram_chart(layer))
