"""`run --from-ncnn DIR --int8`: an int8 set from existing pnnx output, calibrated on the user's wavs."""
import hashlib
import json
from pathlib import Path

import pytest

from core.pipeline.demo import demo_recipe
from tests.paths import SHARED_REAL

REAL = SHARED_REAL
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"the icefall-real fixtures are not at {REAL}")
WAVS = demo_recipe("lstm").test_wavs


def flags(arch):
    return (REAL / arch / "export-flags.txt").read_text().split()


@needs_real
def test_int8_needs_calibration_audio(cli, tmp_path):
    code, out, err = cli("run", "--from-ncnn", REAL / "lstm", "--arch", "lstm", *flags("lstm"), "--int8",
                         "--out", tmp_path / "o", "--dry-run")
    assert code == 2 and "calibration.wavs: int8 needs calibration audio" in err


@needs_real
def test_dry_run_lists_calibrate_and_quantize_on_the_given_files(cli, tmp_path):
    code, out, err = cli("run", "--from-ncnn", REAL / "lstm", "--arch", "lstm", *flags("lstm"), "--int8",
                         "--calibration-wav", WAVS[0], "--out", tmp_path / "o", "--dry-run")
    assert code == 0, err
    assert "Calibrate int8 scales (built in)" in out and "Quantize encoder and joiner" in out


@needs_real
@pytest.mark.slow
def test_lstm_from_ncnn_int8_decodes_in_sherpa_ncnn(cli, tmp_path):
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (REAL / "lstm").iterdir()}
    out = tmp_path / "out"
    wavs = [a for w in WAVS for a in ("--wav", w)]
    code, stdout, stderr = cli("run", "--from-ncnn", REAL / "lstm", "--arch", "lstm", *flags("lstm"), "--int8",
                               *wavs, "--out", out)
    assert code == 0, stdout + stderr
    assert "calibrating on the --wav files" in stdout
    report = json.loads((out / "validation.json").read_text())
    assert report["ok"] and report["decode_int8"]["ok"] and len(report["decode_int8"]["results"]) == len(WAVS)
    assert all(s["mean_cosine"] >= 0.99 for s in report["int8_similarity"])
    assert "SherpaMetaData" in (out / "encoder_jit_trace-pnnx.ncnn.int8.param").read_text()
    assert (out / "joiner_jit_trace-pnnx.ncnn.int8.bin").stat().st_size < (
        out / "joiner_jit_trace-pnnx.ncnn.bin").stat().st_size
    assert before == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (REAL / "lstm").iterdir()}


@needs_real
def test_a_config_with_files_from_ncnn_plans_the_from_ncnn_run(tmp_path):
    from core.pipeline.config import config_from_dict
    from core.pipeline.plan import build_plan
    config = config_from_dict({"arch": "lstm", "hyperparameters": {"num-encoder-layers": 3, "encoder-dim": 192,
                                                                   "rnn-hidden-size": 384},
                               "files": {"from_ncnn": str(REAL / "lstm")}, "output": {"dir": str(tmp_path / "o"),
                                                                                     "int8": True},
                               "calibration": {"wavs": [str(w) for w in WAVS]}})
    run = build_plan(config)
    ids = [s.id for s in run.plan.steps]
    assert ids[:3] == ["import", "rewrite", "metadata"] and "calibrate" in ids and "quantize" in ids
    assert run.config is config and run.resolved.arch.name == "lstm"


@needs_real
def test_the_fp32_set_gets_the_same_bin_rewrite_as_the_fp16_encoder(tmp_path):
    """The real Zipformer's rewrite changes the .bin (integer constants): `run --int8` applies it to pnnx's fp32
    weights too, after checking the rewrite gives the fp16 run's graph."""
    import asyncio
    import shutil

    from core.pipeline.int8_steps import make_fp32_set
    from core.pipeline.layout import fp32_bin, fp32_raw
    from core.pipeline.layout import Layout
    from core.rewrite.driver import plan_file
    from core.pipeline.rewrite_step import rewritten
    from core.pipeline.runner import Plan, Runner
    src, layout = REAL / "zipformer", Layout(tmp_path / "out")
    for path in (fp32_raw(layout, "encoder", "param"), layout.raw("encoder", "param"), layout.final("joiner", "param"),
                 fp32_raw(layout, "joiner", "param"), rewritten(layout, "param")):
        path.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("param", "bin"):  # the fixture's (fp16) weights stand in for pnnx's fp32 ones here
        shutil.copy(src / f"encoder_jit_trace-pnnx.ncnn.{ext}", fp32_raw(layout, "encoder", ext))
        shutil.copy(src / f"joiner_jit_trace-pnnx.ncnn.{ext}", fp32_raw(layout, "joiner", ext))
    shutil.copy(src / "encoder.pnnx.param", fp32_raw(layout, "encoder", "param").with_name("encoder.pnnx.param"))
    shutil.copy(src / "encoder_jit_trace-pnnx.ncnn.param", layout.raw("encoder", "param"))
    shutil.copy(src / "joiner_jit_trace-pnnx.ncnn.param", layout.final("joiner", "param"))
    plan = plan_file(fp32_raw(layout, "encoder", "param"), arch="zipformer")
    assert plan.new_bin is not None  # this model's rewrite does change the weights file
    rewritten(layout, "param").write_bytes(plan.new_param)
    status = asyncio.run(Runner(Plan([make_fp32_set(layout, "zipformer")], layout.out), lambda e: None).run())
    assert status == "ok"
    assert fp32_bin(layout, "encoder").read_bytes() == plan.new_bin
    assert fp32_bin(layout, "joiner").read_bytes() == (src / "joiner_jit_trace-pnnx.ncnn.bin").read_bytes()
    rewritten(layout, "param").write_bytes(plan.new_param.replace(b"cumsum", b"cumsuM", 1))  # another graph
    assert asyncio.run(Runner(Plan([make_fp32_set(layout, "zipformer")], layout.out), lambda e: None).run()) == "failed"
