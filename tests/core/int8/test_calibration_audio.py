"""Calibration audio at other rates: refused by name unless calibration.resample, then resampled to 16 kHz."""
import json

import numpy as np
import pytest
import soxr

from core.common.audio import read_wav
from core.pipeline.calibration_audio import float_wav_bytes
from core.pipeline.demo import demo_config, demo_recipe
from core.pipeline.plan import build_plan
from core.pipeline.layout import PlanError

WAVS = demo_recipe("lstm").test_wavs


def wav_at(path, rate):
    wave = read_wav(WAVS[0])
    path.write_bytes(float_wav_bytes(soxr.resample(wave.samples, 16000, rate), rate))
    return path


def config_with(tmp_path, wavs, resample):
    config = demo_config("lstm")
    config.output.dir = str(tmp_path / "out")
    config.output.int8 = True
    config.calibration.wavs = [str(w) for w in wavs]
    config.calibration.resample = resample
    return config


def test_float_wav_round_trips_through_our_reader(tmp_path):
    x = np.linspace(-1, 1, 441, dtype=np.float32)
    (tmp_path / "a.wav").write_bytes(float_wav_bytes(x, 44100))
    wave = read_wav(tmp_path / "a.wav")
    assert wave.sample_rate == 44100 and wave.channels == 1 and np.array_equal(wave.samples, x)


def test_other_rates_are_refused_by_name_and_the_fix_is_named(tmp_path):
    odd = wav_at(tmp_path / "cd.wav", 44100)
    with pytest.raises(PlanError) as err:
        build_plan(config_with(tmp_path, [odd, WAVS[1]], resample=False))
    text = "\n".join(err.value.problems)
    assert f"{odd}: 44100 Hz" in text and "calibration.resample = true" in text


def test_with_resample_a_step_makes_16k_copies_and_calibration_reads_them(tmp_path):
    odd = wav_at(tmp_path / "cd.wav", 44100)
    run = build_plan(config_with(tmp_path, [odd, WAVS[1]], resample=True))
    steps = {s.id: s for s in run.plan.steps}
    ids = list(steps)
    assert ids.index("calibration-audio") < ids.index("calibrate")
    copy = steps["calibration-audio"].outputs[0]
    assert copy.parent == tmp_path / "out" / "work" / "calibration-audio"
    assert copy in steps["calibrate"].inputs and odd not in steps["calibrate"].inputs
    assert WAVS[1] in steps["calibrate"].inputs  # 16 kHz files are read where they are
    assert any(str(odd) in w and "resampled to 16 kHz" in w for w in run.warnings)


def test_a_resampled_file_shorter_than_a_chunk_is_skipped_or_refused_when_alone(tmp_path):
    tiny = tmp_path / "tiny.wav"
    tiny.write_bytes(float_wav_bytes(np.zeros(400, np.float32), 8000))  # 0.05 s: less than 9 frames
    planned = build_plan(config_with(tmp_path, [tiny, WAVS[0]], resample=True))  # another file is usable: skipped
    assert any("tiny.wav: shorter than one chunk" in w and "skipped" in w for w in planned.warnings)
    with pytest.raises(PlanError, match="tiny.wav: shorter than one chunk"):
        build_plan(config_with(tmp_path, [tiny], resample=True))


@pytest.mark.slow
def test_int8_demo_calibrated_on_44k_audio(tmp_path, capsys):
    from tui.cli.main import main
    odd = wav_at(tmp_path / "cd.wav", 44100)
    cfg = config_with(tmp_path, [odd], resample=True)
    cfg.save(tmp_path / "wizard.toml")
    out = tmp_path / "out"
    assert main(["run", "--config", str(tmp_path / "wizard.toml")]) == 0
    copies = list((out / "work" / "calibration-audio").glob("*.wav"))
    assert len(copies) == 1 and read_wav(copies[0]).sample_rate == 16000
    assert abs(read_wav(copies[0]).seconds - read_wav(odd).seconds) < 0.01
    validation = json.loads((out / "validation.json").read_text())
    assert validation["ok"] and validation["decode_int8"]["ok"]
    assert odd.read_bytes()[:4] == b"RIFF"  # the user's file is only read


def test_a_short_calibration_wav_beside_usable_ones_is_skipped_not_refused(tmp_path):
    """The icefall matrix: a 1.0 s wav with a 96-frame chunk refused whole int8 runs although others were usable."""
    short = tmp_path / "short.wav"
    short.write_bytes(float_wav_bytes(np.zeros(800, np.float32), 16000))  # 0.05 s
    planned = build_plan(config_with(tmp_path, [short, WAVS[0]], resample=False))
    assert any("short.wav" in w and "skipped" in w for w in planned.warnings)
    with pytest.raises(PlanError, match="none of the files can be used"):
        build_plan(config_with(tmp_path, [short], resample=False))
