"""`run --from-ncnn DIR --int8`: an int8 set from existing pnnx output, calibrated on the user's wavs."""
import hashlib
import json
from pathlib import Path

import pytest

from core.demo import demo_recipe

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "icefall-real"
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
    from core.config import config_from_dict
    from core.pipeline import build_plan
    config = config_from_dict({"arch": "lstm", "hyperparameters": {"num-encoder-layers": 3, "encoder-dim": 192,
                                                                   "rnn-hidden-size": 384},
                               "files": {"from_ncnn": str(REAL / "lstm")}, "output": {"dir": str(tmp_path / "o"),
                                                                                     "int8": True},
                               "calibration": {"wavs": [str(w) for w in WAVS]}})
    run = build_plan(config)
    ids = [s.id for s in run.plan.steps]
    assert ids[:3] == ["import", "rewrite", "metadata"] and "calibrate" in ids and "quantize" in ids
    assert run.config is config and run.resolved.arch.name == "lstm"
