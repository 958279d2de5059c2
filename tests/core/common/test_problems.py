"""Problems carry a kind, and the kind — never the wording — decides what other modules do with them."""
from __future__ import annotations

import pickle
import wave
from pathlib import Path

import numpy as np
import pytest

from core.common.problems import Problem, ProblemError, ProblemKind, kind_of


def _wav(path: Path, rate: int, seconds: float = 1.0) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(np.arange(int(rate * seconds)) / 7) * 8000).astype("<i2").tobytes())
    return path


def test_a_problem_is_its_sentence_and_keeps_its_kind():
    p = Problem(ProblemKind.SAMPLE_RATE, "8000 Hz", key="a.wav", how="; resample it")
    assert p == "a.wav: 8000 Hz; resample it" and "; ".join([p, "x"]) == "a.wav: 8000 Hz; resample it; x"
    assert p.detail == "8000 Hz; resample it" and p.with_key("--wav") == "--wav: 8000 Hz; resample it"
    assert p.with_key("--wav").kind is ProblemKind.SAMPLE_RATE and p.with_how("").kind is ProblemKind.SAMPLE_RATE
    again = pickle.loads(pickle.dumps(p))
    assert again == p and again.kind is ProblemKind.SAMPLE_RATE and again.key == "a.wav"
    assert kind_of("a.wav: 8000 Hz; resample it") is None  # plain text has no kind, whatever it says
    assert kind_of(ProblemError("x", ProblemKind.BAD_INPUT)) is ProblemKind.BAD_INPUT
    assert kind_of(ProblemError("x")) is ProblemKind.FAILED


# -- the CLI's exit code ---------------------------------------------------------------------------------------

def test_calibration_exit_code_follows_the_kind_not_the_message():
    from core.int8.calibrate import CalibrationError
    from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED
    from tui.cli.int8 import calibration_exit_code
    assert calibration_exit_code(CalibrationError("the audio list was unusable", ProblemKind.BAD_INPUT)) \
        == EXIT_BAD_INPUT
    # the old trigger words without the kind: the tool failed, the input is not blamed
    assert calibration_exit_code(CalibrationError("no usable calibration audio: SherpaMetaData")) == EXIT_FAILED


def test_the_kind_crosses_the_calibration_child(tmp_path, cli):
    """A real child: an encoder without SherpaMetaData is the input's fault, reported as such (exit 2 semantics
    come from the kind the child printed, not from the words of its error line)."""
    from core.int8.children import _reported_kind
    from tui.cli.exit_codes import EXIT_BAD_INPUT
    for net in ("encoder", "decoder", "joiner"):
        (tmp_path / f"{net}_jit_trace-pnnx.ncnn.param").write_text("7767517\n1 1\nInput in0 0 1 in0\n")
        (tmp_path / f"{net}_jit_trace-pnnx.ncnn.bin").write_bytes(b"")
    code, _out, err = cli("calibrate", tmp_path, "--wav", _wav(tmp_path / "a.wav", 16000))
    assert code == EXIT_BAD_INPUT and "SherpaMetaData" in err
    assert _reported_kind(["x", "problem-kind: bad_input", "error: anything"]) is ProblemKind.BAD_INPUT
    assert _reported_kind(["error: no usable calibration audio"]) is ProblemKind.FAILED
    assert _reported_kind(["problem-kind: from-a-newer-version"]) is ProblemKind.FAILED


# -- sample rate: resampling is offered by kind -----------------------------------------------------------------

def test_other_sample_rate_is_a_kind_and_the_wizard_offers_resampling(tmp_path):
    from core.int8.calibration import check_wavs
    from core.pipeline.config import WizardConfig
    from tui.wizard import logic
    slow = _wav(tmp_path / "slow.wav", 8000)
    check = check_wavs([slow], segment_frames=9)
    assert [kind_of(p) for p in check.problems] == [ProblemKind.SAMPLE_RATE]
    config = WizardConfig()
    config.calibration.resample = True
    usable, lines = logic.calibration_check([slow], config)
    assert usable and f"→ {slow}: 8000 Hz: resampled to 16 kHz when the run starts" in lines
    config.calibration.resample = False
    usable, lines = logic.calibration_check([slow], config)
    assert not usable and "tick 'resample' below to use them anyway" in lines


# -- the wizard's Review: "Run anyway" and its own way out ------------------------------------------------------

def test_run_anyway_button_is_decided_by_the_kind():
    from tui.wizard import checks
    reworded = Problem(ProblemKind.CHECKPOINT_MISMATCH, "--num-heads 4 is not what the weights hold",
                       key="hyperparameters", how=" (some other way out)")
    assert checks.offers_run_anyway([reworded])
    assert not checks.offers_run_anyway(["hyperparameters: x (fix it, or set files.ignore_checkpoint_mismatch)"])
    assert not checks.offers_run_anyway([Problem(ProblemKind.BAD_INPUT, "x", key="files.checkpoint")])


def test_wizard_words_come_from_the_kind():
    from tui.wizard import checks
    mismatch = Problem(ProblemKind.CHECKPOINT_MISMATCH, "the weights say 8", key="hyperparameters",
                       how=" (use --ignore-checkpoint-mismatch)")
    assert checks.in_wizard_words(mismatch) == \
        'hyperparameters: the weights say 8 (fix it on Hyperparameters, or press "Run anyway" below)'
    traced = Problem(ProblemKind.NEEDS_TRACED, "pnnx dropped a slice", key="--from-ncnn", how="; use --traced-dir")
    wizard = checks.in_wizard_words(traced)
    assert wizard.startswith("--from-ncnn: pnnx dropped a slice; give the traced modules (the \"traced modules\" "
                             "field on Files, with encoder_jit_trace-pnnx.pt)") and "--traced-dir" not in wizard
    plain = "hyperparameters: x (fix it, or set files.ignore_checkpoint_mismatch / --ignore-checkpoint-mismatch)"
    assert checks.in_wizard_words(plain) == plain  # no kind: shown as it is, never rewritten


def test_fix_and_resume_goes_where_the_kind_says():
    from tui.wizard import logic
    wrong = Problem(ProblemKind.HYPERPARAMETERS, "the flags describe another model")
    assert logic.fix_target("export", wrong, "exit code 1") == "hyperparameters"
    assert logic.fix_target("export", "the hyperparameters don't match the checkpoint", None) == "files"
    assert logic.fix_target("metadata", None, None) == "hyperparameters"


def test_export_failure_hint_has_the_hyperparameters_kind():
    from core.common.hints import hint_for
    from tui.wizard import logic
    hint = hint_for(["RuntimeError: Error(s) in loading state_dict: size mismatch for encoder.x"])
    assert kind_of(hint) is ProblemKind.HYPERPARAMETERS
    assert logic.fix_target("export", hint, "exit code 1") == "hyperparameters"
    python = hint_for(["ModuleNotFoundError: No module named 'k2'"])
    assert kind_of(python) is ProblemKind.PYTHON_ENV and logic.fix_target("export", python, "exit code 1") == "files"


# -- --from-ncnn problems --------------------------------------------------------------------------------------

def test_from_ncnn_problems_carry_their_key(tmp_path):
    from core.pipeline.from_ncnn import source_problems
    from core.pipeline.plan_checks import validation_wav_problems
    from tui.wizard import logic
    problems = source_problems(tmp_path / "nowhere")
    assert [(p.kind, p.key) for p in problems] == [(ProblemKind.BAD_INPUT, "--from-ncnn")]
    assert logic.check_ncnn_dir(str(tmp_path / "nowhere")).message == f"{tmp_path / 'nowhere'} is not a directory"
    slow = _wav(tmp_path / "slow.wav", 8000)
    [p] = validation_wav_problems([str(slow)], key="--wav")
    assert p.startswith(f"--wav: {slow}: 8000 Hz") and p.key == "--wav"


@pytest.mark.parametrize("ignore", [False, True])
def test_checkpoint_mismatch_from_the_planner_has_the_kind(ignore):
    """The real producer: a demo config whose flags contradict its checkpoint."""
    from core.pipeline.demo import demo_config
    from core.pipeline.plan import check_checkpoint
    config = demo_config("zipformer")
    config.files.ignore_checkpoint_mismatch = ignore
    flags = config.hyperparameters
    key = next(k for k, v in flags.items() if isinstance(v, str) and "," in v)
    flags[key] = ",".join(str(int(x) * 2) for x in flags[key].split(","))
    problems, warnings, _ = check_checkpoint(config, Path(config.files.checkpoint).expanduser(), None)
    mismatches = [p for p in problems + warnings if kind_of(p) is ProblemKind.CHECKPOINT_MISMATCH]
    assert mismatches
    if ignore:
        assert not problems and all(not p.how for p in mismatches)
    else:
        assert all("--ignore-checkpoint-mismatch" in p.how for p in problems if p in mismatches)
