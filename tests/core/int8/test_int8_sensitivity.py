"""Per-layer int8 sensitivity, the mixed-precision (keep-float) search, the int8 size prediction and min_cosine.

The fast tests build a tiny ncnn model by hand (three InnerProducts; the middle one has a huge weight on an input
that is always zero, so per-row int8 rounds every other weight of that layer to 0) and run the real quantizer and
real python ncnn on it. The slow test runs the LSTM demo through the whole pipeline with --int8 and --min-cosine,
then gives one layer of its fp32 encoder the same kind of outlier and runs the quantize step's child on it.
Run: .venv/bin/python -m pytest tests/core/int8/test_int8_sensitivity.py -q -p no:xdist
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from core.int8.calibrate import ActivationScale, ScaleTable
from core.int8.quantize import Quantizer, quantize, write_checked
from core.int8.sensitivity import (
    Evaluator,
    Recording,
    most_sensitive_first,
    predict_in_child,
    quantize_net,
    search_keep_float,
)
from core.pipeline.config import ConfigError, config_from_dict

DIM, OUT = 16, 8
LAYERS = ("linear_1", "linear_2", "linear_3")


def _weights(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (DIM, DIM)).astype(np.float32)
    w1[0] = 0.0  # linear_1's output feature 0 is always exactly 0 ...
    b1 = rng.normal(0, 0.1, DIM).astype(np.float32)
    b1[0] = 0.0
    w2 = rng.normal(0, 0.3, (DIM, DIM)).astype(np.float32)
    w2[:, 0] = 1000.0  # ... so this outlier never contributes in fp32, but sets every row's int8 scale
    b2 = rng.normal(0, 0.01, DIM).astype(np.float32)
    w3 = rng.normal(0, 0.3, (OUT, DIM)).astype(np.float32)
    b3 = rng.normal(0, 0.1, OUT).astype(np.float32)
    return {"linear_1": (w1, b1), "linear_2": (w2, b2), "linear_3": (w3, b3)}


def _write_model(d: Path, weights) -> tuple[Path, Path]:
    lines = ["7767517", "4 4", f"Input in0 0 1 in0 0={DIM}",
             f"InnerProduct linear_1 1 1 in0 1 0={DIM} 1=1 2={DIM * DIM}",
             f"InnerProduct linear_2 1 1 1 2 0={DIM} 1=1 2={DIM * DIM}",
             f"InnerProduct linear_3 1 1 2 out0 0={OUT} 1=1 2={OUT * DIM}"]
    data = b""
    for name in LAYERS:
        w, b = weights[name]
        data += struct.pack("<I", 0) + w.astype("<f4").tobytes() + b.astype("<f4").tobytes()  # tagged fp32, raw bias
    param, binary = d / "net.param", d / "net.bin"
    param.write_text("\n".join(lines) + "\n")
    binary.write_bytes(data)
    return param, binary


def _forward(weights, x: np.ndarray) -> list[np.ndarray]:
    """Each layer's input, then the output (fp32, numpy)."""
    seen = [x]
    for name in LAYERS:
        w, b = weights[name]
        seen.append(w @ seen[-1] + b)
    return seen


def _table(weights, inputs: np.ndarray) -> ScaleTable:
    table = ScaleTable()
    per_layer = list(zip(*[_forward(weights, x)[:3] for x in inputs]))
    for name, seen in zip(LAYERS, per_layer):
        w, _ = weights[name]
        absmax = np.abs(w).max(axis=1)
        table.weights[name] = np.where(absmax > 0, 127.0 / np.where(absmax > 0, absmax, 1), 1.0).astype(np.float32)
        top = float(np.abs(np.stack(seen)).max())
        table.activations[name] = ActivationScale(name, top, top, 127.0 / top)
    return table


@pytest.fixture
def tiny(tmp_path):
    weights = _weights()
    rng = np.random.default_rng(1)
    inputs = rng.normal(0, 1, (40, DIM)).astype(np.float32)
    param, binary = _write_model(tmp_path, weights)
    recording = Recording([[x] for x in inputs], [_forward(weights, x)[-1] for x in inputs])
    return param, binary, _table(weights, inputs), recording, tmp_path


def test_fp32_model_is_what_numpy_computes(tiny):
    """The hand-written model is read by ncnn as meant: fp32 ncnn reproduces the numpy outputs."""
    param, binary, _, recording, tmp = tiny
    assert Evaluator(recording, False, tmp)(param.read_bytes(), binary.read_bytes()) > 0.99999


def test_sensitivity_ranks_the_outlier_layer_first_and_the_search_keeps_exactly_it(tiny):
    param, binary, table, recording, tmp = tiny
    quantizer = Quantizer(param, binary, table)
    result, param_bytes, bin_bytes = quantize_net(quantizer, recording, tmp, 0.99, "joiner")
    assert set(result.sensitivity) == set(LAYERS)
    order = most_sensitive_first(result.sensitivity)
    assert order[0] == "linear_2"
    assert result.sensitivity["linear_2"] < 0.9 < 0.999 < min(result.sensitivity[n] for n in order[1:])
    assert result.cosine_int8 < 0.9  # every layer int8: the outlier layer ruins the output
    assert result.kept_float == ["linear_2"] and result.reached
    assert result.cosine >= 0.99
    assert result.bytes > result.bytes_int8  # the kept layer costs bytes (fp16 instead of int8)
    # what would be written: linear_2 is not int8 in the param (no 8=2), the two others are
    text = param_bytes.decode()
    assert [(" 8=2" in line) for line in text.splitlines() if line.startswith("InnerProduct")] == [True, False, True]
    out_param, out_bin = tmp / "int8.param", tmp / "int8.bin"
    write_checked(param_bytes, bin_bytes, out_param, out_bin)  # ncnn consumes every byte
    assert Evaluator(recording, False, tmp)(out_param.read_bytes(), out_bin.read_bytes()) >= 0.99
    assert result.report["float_by_choice"] == ["linear_2"]


def test_without_a_target_everything_stays_int8(tiny):
    param, binary, table, recording, tmp = tiny
    result, param_bytes, _ = quantize_net(Quantizer(param, binary, table), recording, tmp, None, "joiner")
    assert result.kept_float == [] and result.cosine == result.cosine_int8 < 0.9
    assert param_bytes.decode().count(" 8=2") == 3
    assert result.evaluations == 4  # three layers alone, then the whole net


def test_a_spent_budget_measures_layers_on_fewer_forwards_not_fewer_layers(tiny):
    """Past the time budget each layer is measured on fewer of the recorded forwards (never below MIN_FORWARDS);
    every layer is still measured and the outlier layer still ranks first."""
    from core.int8.sensitivity import MIN_FORWARDS, layer_sensitivity
    param, binary, table, recording, tmp = tiny
    evaluate = Evaluator(recording, False, tmp)
    sens, fewest = layer_sensitivity(Quantizer(param, binary, table), list(LAYERS), evaluate, budget=0.0)
    assert set(sens) == set(LAYERS) and most_sensitive_first(sens)[0] == "linear_2"
    assert fewest == MIN_FORWARDS < len(recording.inputs)
    assert evaluate.count == len(LAYERS)
    sens, fewest = layer_sensitivity(Quantizer(param, binary, table), list(LAYERS), evaluate, budget=None)
    assert fewest == len(recording.inputs)


def test_search_galloping_then_bisecting_finds_the_fewest_layers():
    order = [f"l{i}" for i in range(20)]
    calls = []

    def cosine_of(kept):  # cosine rises by 0.01 per layer kept float; 0.9 with none
        calls.append(len(kept))
        return 0.9 + 0.01 * len(kept)

    kept, cos, reached = search_keep_float(order, cosine_of, 0.955, 0.9)
    assert kept == order[:6] and reached and cos == pytest.approx(0.96)
    assert len(calls) < 8  # 1, 2, 4, 8, then bisecting: not one evaluation per layer
    kept, cos, reached = search_keep_float(order, cosine_of, 0.5, 0.9)
    assert kept == [] and reached
    kept, cos, reached = search_keep_float(order, lambda k: 0.9, 0.99, 0.9)
    assert kept == order and not reached  # everything float and still short: said so


def test_prediction_equals_the_written_size(tiny):
    """The size prediction (the quantizer's own plan with a stand-in table, in a child) is the written .bin's size,
    from the fp32 files and from an fp16 copy of them alike."""
    param, binary, table, _, tmp = tiny
    report = quantize(param, binary, table, tmp / "q.param", tmp / "q.bin")
    predicted = predict_in_child([(param, binary)])
    assert predicted[0]["bytes_after"] == (tmp / "q.bin").stat().st_size == report.bytes_after
    assert predicted[0]["int8"] == list(LAYERS)
    fp16_param, fp16_bin = tmp / "fp16.param", tmp / "fp16.bin"
    fp16 = Quantizer(param, binary, ScaleTable()).render()  # no table: every weight fp16, nothing int8
    write_checked(fp16[0], fp16[1], fp16_param, fp16_bin)
    assert predict_in_child([(fp16_param, fp16_bin)])[0]["bytes_after"] == report.bytes_after


def test_report_merges_the_sidecar_only_for_the_files_it_describes(tmp_path):
    import hashlib

    from core.int8.report import merge_sensitivity, report_sensitivity_lines, NetFiles
    from core.int8.sensitivity import SIDECAR
    int8_bin = tmp_path / "encoder.int8.bin"
    int8_bin.write_bytes(b"int8 weights")
    nets = [NetFiles("encoder", tmp_path / "f.param", tmp_path / "f.bin", tmp_path / "encoder.int8.param", int8_bin)]
    sidecar = {"min_cosine": 0.99, "nets": {"encoder": {
        "sensitivity": {"a": 0.95, "b": 0.9999}, "kept_float": ["a"], "cosine_int8": 0.97, "cosine": 0.995,
        "bytes_int8": 100, "bytes": 140, "reached": True, "int8_sha256": hashlib.sha256(b"int8 weights").hexdigest()}}}
    (tmp_path / SIDECAR).write_text(json.dumps(sidecar))
    report = {"layers": [{"net": "encoder", "layer": "a", "precision": "fp16"},
                         {"net": "encoder", "layer": "b", "precision": "int8"}]}
    merge_sensitivity(report, nets)
    assert [r.get("sensitivity") for r in report["layers"]] == [0.95, 0.9999]
    assert report["layers"][0]["kept_float"] and "kept float" in report["layers"][0]["why"]
    assert report["mixed_precision"]["nets"]["encoder"]["bytes_cost"] == 40
    lines = report_sensitivity_lines(report)
    assert lines[0].startswith("int8 sensitivity, encoder")
    assert lines[1].split()[:2] == ["a", "█" * 24] and lines[2].split()[0] == "b"  # sorted, the worst bar longest
    assert 1 <= lines[2].count("█") < 24
    assert "kept 1 layer(s) float (a)" in lines[3] and "+40 bytes" in lines[3]
    int8_bin.write_bytes(b"other int8 weights")  # another tool rewrote the files: the old sidecar is not theirs
    stale = {"layers": [{"net": "encoder", "layer": "a", "precision": "fp16"}]}
    merge_sensitivity(stale, nets)
    assert "sensitivity" not in stale["layers"][0] and "mixed_precision" not in stale


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan")])
def test_config_refuses_a_min_cosine_that_is_not_a_cosine_target(value):
    with pytest.raises(ConfigError, match=r"calibration\.min_cosine"):
        config_from_dict({"calibration": {"min_cosine": value}}, source="w.toml")


def test_config_min_cosine_parses_and_round_trips(tmp_path):
    from core.pipeline.config import load_config
    assert config_from_dict({}).calibration.min_cosine is None
    config = config_from_dict({"calibration": {"min_cosine": 0.99}})
    assert config.calibration.min_cosine == 0.99
    with pytest.raises(ConfigError, match=r"calibration\.min_cosine must be a number"):
        config_from_dict({"calibration": {"min_cosine": "0.99"}})
    (tmp_path / "w.toml").write_text(config.to_toml())
    assert load_config(tmp_path / "w.toml").calibration.min_cosine == 0.99
    assert "min_cosine" not in config_from_dict({}).to_toml()


def test_cli_min_cosine_flag(cli):
    code, _, err = cli("run", "--demo", "lstm", "--int8", "--min-cosine", "1.2", "--dry-run")
    assert code == 2 and "--min-cosine = 1.2" in err
    code, out, _ = cli("run", "--demo", "lstm", "--int8", "--min-cosine", "0.995", "--dry-run")
    assert code == 0 and "cosine >= 0.995" in out
    code, _, err = cli("run", "--demo", "lstm", "--min-cosine", "0.995", "--dry-run")
    assert code == 0 and "--min-cosine ignored" in err


# -- the whole pipeline on the LSTM demo (slow) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    from tui.cli.main import main
    out = tmp_path_factory.mktemp("sens") / "lstm"
    code = main(["run", "--demo", "lstm", "--int8", "--min-cosine", "0.9", "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_demo_run_writes_sensitivity_and_the_prediction_is_close(lstm_run):
    from core.int8.report import predict_int8_bytes
    layers = json.loads((lstm_run / "int8-layers.json").read_text())
    sens = [r for r in layers["layers"] if "sensitivity" in r]
    assert {r["net"] for r in sens} == {"encoder", "joiner"}
    assert all(r["precision"].startswith("int8") for r in sens)  # min_cosine 0.9: nothing kept float
    assert layers["mixed_precision"]["min_cosine"] == 0.9
    nets = [(lstm_run / f"{n}_jit_trace-pnnx.ncnn.param", lstm_run / f"{n}_jit_trace-pnnx.ncnn.bin")
            for n in ("encoder", "joiner")]  # the shipped fp16 files: what the wizard has before an int8 run
    predicted = predict_int8_bytes(nets)["bytes_after"]
    actual = sum((lstm_run / f"{n}_jit_trace-pnnx.ncnn.int8.bin").stat().st_size for n in ("encoder", "joiner"))
    assert abs(predicted - actual) <= 0.03 * actual


def _outlier_encoder(run: Path, tmp: Path) -> tuple[Path, Path, str]:
    """The demo's fp32 encoder with its feed-forward (InnerProduct, x*sigmoid(x-1), InnerProduct) made so that the
    second InnerProduct (the victim) is int8-sensitive: one feature of its input is exactly 0 (the first
    InnerProduct's row and bias zeroed), the victim weighs that feature hugely in every row (so per-row int8 rounds
    all its other weights to 0; in fp32 the feature contributes nothing), and its other weights are scaled up so its
    output outweighs the residual. Returns (fp32 .bin, encoder scale table, the victim's name)."""
    from core.ncnn.bin_layout import record_loads
    enc_param = run / "encoder_jit_trace-pnnx.ncnn.param"
    data = bytearray((run / "work" / "fp32" / "set" / "encoder_jit_trace-pnnx.ncnn.bin").read_bytes())
    layers = [l for l in record_loads(enc_param, bytes(data))[0] if l.type == "InnerProduct"]
    prev, victim = layers[0], layers[1]
    width = prev.params[0]
    assert victim.params[2] == victim.params[0] * width  # the victim reads the first one's outputs

    def floats(ld, tagged=True):
        body = data[ld.start + (4 if tagged else 0):ld.end]
        return np.frombuffer(bytes(body), "<f4").copy()

    def put(ld, values, tagged=True):
        data[ld.start + (4 if tagged else 0):ld.end] = values.astype("<f4").tobytes()

    w_prev = floats(prev.loads[0]).reshape(width, -1)
    feature = 0
    w_prev[feature] = 0.0
    put(prev.loads[0], w_prev)
    b_prev = floats(prev.loads[1], tagged=False)
    b_prev[feature] = 0.0
    put(prev.loads[1], b_prev, tagged=False)
    w = floats(victim.loads[0]).reshape(victim.params[0], width) * 10.0
    w[:, feature] = 1e4 * np.abs(w).max()
    put(victim.loads[0], w)
    put(victim.loads[1], floats(victim.loads[1], tagged=False) * 10.0, tagged=False)
    binary = tmp / "encoder.bin"
    binary.write_bytes(bytes(data))
    table = tmp / "encoder-scale-table.txt"  # the victim's weight scales follow its new weights, as calibrated
    scales = " ".join(f"{s:f}" for s in 127.0 / np.abs(w).max(axis=1))
    table.write_text("".join((f"{victim.name}_param_0 {scales}" if line.startswith(f"{victim.name}_param_0 ")
                              else line) + "\n"
                             for line in (run / "encoder-scale-table.txt").read_text().splitlines() if line))
    return binary, table, victim.name


@pytest.mark.slow
def test_demo_encoder_with_one_outlier_layer_keeps_exactly_it_float(lstm_run, tmp_path):
    """The quantize step's child (recording, sensitivity, search) on the demo encoder with one layer made
    int8-sensitive: it ranks that layer first and keeps exactly it float to reach min_cosine."""
    from core.int8.calibration import ModelFiles
    from core.int8.sensitivity import quantize_with_sensitivity_in_child
    from core.pipeline.demo import DEMO_ROOT
    bad_bin, enc_table, victim = _outlier_encoder(lstm_run, tmp_path)
    files = ModelFiles(lstm_run / "encoder_jit_trace-pnnx.ncnn.param", bad_bin,
                       lstm_run / "decoder_jit_trace-pnnx.ncnn.param", lstm_run / "decoder_jit_trace-pnnx.ncnn.bin",
                       lstm_run / "joiner_jit_trace-pnnx.ncnn.param",
                       lstm_run / "work" / "fp32" / "set" / "joiner_jit_trace-pnnx.ncnn.bin")
    wavs = sorted((DEMO_ROOT / "calibration_wavs").glob("*.wav"))
    outputs = {n: (tmp_path / f"{n}.int8.param", tmp_path / f"{n}.int8.bin") for n in ("encoder", "joiner")}
    sidecar = tmp_path / "int8-sensitivity.json"
    quantize_with_sensitivity_in_child(files, (enc_table, lstm_run / "joiner-scale-table.txt"), wavs, outputs, 0.99,
                                       sidecar)
    enc = json.loads(sidecar.read_text())["nets"]["encoder"]
    assert most_sensitive_first(enc["sensitivity"])[0] == victim, enc["sensitivity"]
    assert enc["cosine_int8"] < 0.99 <= enc["cosine"]
    assert enc["kept_float"] == [victim] and enc["reached"]
    line = next(l for l in outputs["encoder"][0].read_text().splitlines() if l.split()[1:2] == [victim])
    assert " 8=2" not in line


def test_wizard_quantization_screen_min_cosine_and_predicted_size(tiny, tmp_path):
    """The field refuses what is not a cosine target (Next disabled, the field named) and saves a good one; the
    int8 size line is predicted from the float files already in the output directory."""
    import asyncio
    import shutil

    from core.common.formatting import human
    from core.pipeline.demo import demo_config
    from tui.wizard.app import WizardApp
    from tui.wizard.review import QuantScreen
    param, binary, table, _, _ = tiny
    out = tmp_path / "out"
    out.mkdir()
    for net in ("encoder", "joiner"):
        shutil.copy(param, out / f"{net}_jit_trace-pnnx.ncnn.param")
        shutil.copy(binary, out / f"{net}_jit_trace-pnnx.ncnn.bin")
    size = quantize(param, binary, table, tmp_path / "q.param", tmp_path / "q.bin").bytes_after
    config = demo_config("lstm")
    config.output.dir, config.output.int8 = str(out), True

    async def drive():
        app = WizardApp(config=config, show_timings=False)
        async with app.run_test(size=(110, 44)) as pilot:
            await pilot.pause()
            app.push_screen(QuantScreen())
            for _ in range(200):
                await pilot.pause(0.05)
                if "predicting" not in str(app.screen.query_one("#int8-size").render()):
                    break
            shown = str(app.screen.query_one("#int8-size").render())
            field = app.screen.query_one("#min-cosine")
            field.value = "1.5"
            await pilot.pause()
            refused = str(app.screen.query_one("#min-cosine-check").render()), app.screen.query_one("#next").disabled
            field.value = "0.995"
            await pilot.pause()
            app.screen.save()
            return shown, refused, app.config.calibration.min_cosine

    shown, (message, disabled), saved = asyncio.run(drive())
    assert f"predicted from the fp16 model already in {out}: {human(2 * size)}" in shown
    assert "min_cosine = 1.5" in message and disabled
    assert saved == 0.995


def test_min_cosine_with_ncnn2int8_quantizing_is_a_plan_warning(tmp_path, monkeypatch):
    """Only the built-in quantizer measures sensitivity: with the user's ncnn2int8 the target is said to be
    ignored before anything runs; with the built-in one the quantize step carries it."""
    import os

    from core.pipeline.demo import demo_config
    from core.pipeline.plan import build_plan
    from tests.int8_tool_standins import install
    monkeypatch.setenv("PATH", str(install(tmp_path / "bin")) + os.pathsep + os.environ["PATH"])
    config = demo_config("lstm")
    config.output.dir, config.output.int8 = str(tmp_path / "o"), True
    config.calibration.min_cosine = 0.995
    config.calibration.backend = "external"
    run = build_plan(config)
    assert any("calibration.min_cosine = 0.995 is ignored" in w for w in run.warnings)
    config.calibration.backend = "builtin"
    run = build_plan(config)
    assert not any("is ignored" in w for w in run.warnings), run.warnings
    step = next(s for s in run.plan.steps if s.id == "quantize")
    assert "0.995" in step.fingerprint_extra and "cosine >= 0.995" in step.describe


def test_config_sensitivity_modes():
    assert config_from_dict({}).calibration.sensitivity == "auto"
    assert config_from_dict({"calibration": {"sensitivity": "off"}}).calibration.sensitivity == "off"
    with pytest.raises(ConfigError, match=r"calibration\.sensitivity = 'sometimes' is not one of auto, on, off"):
        config_from_dict({"calibration": {"sensitivity": "sometimes"}}, source="w.toml")


def test_quantize_without_measuring_writes_the_same_int8_files_and_no_sensitivity(tiny):
    """Large models quantize without the per-layer sensitivity (minutes and GBs at published sizes): the same int8
    pair as the whole-net render, and a sidecar that says nothing was measured, so the report adds nothing."""
    from core.int8.calibration import ModelFiles
    from core.int8.report import NetFiles, merge_sensitivity
    from core.int8.sensitivity import SIDECAR, run_here
    param, binary, table, _, tmp = tiny
    (tmp / "table.txt").write_text(table.text())
    files = ModelFiles(param, binary, param, binary, param, binary)
    outs = {net: (tmp / f"{net}.int8.param", tmp / f"{net}.int8.bin") for net in ("encoder", "joiner")}
    sidecar = tmp / SIDECAR
    data = run_here(files, (tmp / "table.txt", tmp / "table.txt"), [], outs, None, sidecar, measure=False)
    want_param, want_bin, _ = Quantizer(param, binary, table).render()
    assert outs["encoder"][0].read_bytes() == want_param and outs["joiner"][1].read_bytes() == bytes(want_bin)
    assert data["measured"] is False and json.loads(sidecar.read_text())["measured"] is False
    nets = [NetFiles(net, param, binary, *outs[net]) for net in ("encoder", "joiner")]
    report = {"layers": [{"net": "encoder", "layer": "linear_2", "precision": "int8"}]}
    merge_sensitivity(report, nets)
    assert "sensitivity" not in report["layers"][0] and "mixed_precision" not in report
