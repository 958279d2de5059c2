"""Refused at plan time, before anything runs: checkpoints that would run code (or cannot be read safely) unless
trusted, a vocabulary or context size the checkpoint cannot take, missing epoch files, dims the recipe's code fixes,
unusable validation wavs; a non-streaming Zipformer is warned about. Exports run the stand-in recipes."""
from __future__ import annotations

import os
import shlex
import struct
import sys
from pathlib import Path

import pytest

from core.pipeline.plan import build_plan
from core.pipeline.layout import PlanError
from test_pipeline import finished, run_plan
from test_recipes import ZIPFORMER, icefall, save_zipformer, until_export, zipformer_config  # noqa: F401 - fixture
from tests.paths import REPO

torch = pytest.importorskip("torch")

DEMO_BPE = REPO / "assets" / "demo" / "models" / "zipformer" / "data" / "lang_bpe_500" / "bpe.model"  # 128 pieces
TOKENS = "<blk> 0\n<sos/eos> 1\n<unk> 2\na 3\nb 4\nc 5\n"


class _RunsCode:
    """Unpickling this runs a shell command (what a hostile checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def config(icefall, tmp_path):
    c = zipformer_config(icefall, ZIPFORMER, tmp_path)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    c.files.tokens = str(tokens)
    return c


def problems_of(config) -> list[str]:
    with pytest.raises(PlanError) as err:
        build_plan(config)
    return err.value.problems


# -- trust -------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("zip_format", [True, False])
def test_a_checkpoint_that_runs_code_never_reaches_the_export_unless_trusted(config, tmp_path, cli, zip_format):
    marker = tmp_path / "pwned"
    ckpt = Path(config.files.checkpoint)
    sd = torch.load(ckpt, weights_only=True)["model"]
    torch.save({"model": sd, "evil": _RunsCode(marker)}, ckpt, _use_new_zipfile_serialization=zip_format)
    path = tmp_path / "wizard.toml"
    config.save(path)
    code, out, err = cli("run", "--config", path)
    assert code == 2 and not marker.exists()
    assert str(ckpt) in err and "posix.system" in err and "--trust-checkpoint" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written, let alone exported
    with pytest.raises(PlanError) as refused:
        build_plan(config)
    assert refused.value.untrusted == [(str(ckpt), ["posix.system"])]  # what the wizard's trust tick names
    code, out, _ = cli("run", "--config", path, "--trust-checkpoint", "--dry-run")
    assert code == 0 and "trusted (files.trust_checkpoint)" in out and not marker.exists()
    # trusted: the plan goes ahead, and icefall's export (here the stand-in's torch.load) unpickles it
    config.files.trust_checkpoint = True
    status, events = run_plan(until_export(build_plan(config)))
    assert finished(events)["export"].status == "ok"
    assert marker.exists()  # the pickle is live: the refusal above is what kept it from running


def test_trust_in_wizard_toml(config, tmp_path, cli):
    ckpt = Path(config.files.checkpoint)
    ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    assert any(str(ckpt) in p and "cannot be read safely" in p and "--trust-checkpoint" in p for p in problems_of(config))
    path = tmp_path / "wizard.toml"
    config.files.trust_checkpoint = True
    config.save(path)
    code, out, _ = cli("run", "--config", path, "--dry-run")
    assert code == 0 and "not checked against the hyperparameters" in out


def test_every_file_an_averaged_export_loads_is_checked(config, tmp_path):
    exp = tmp_path / "exp"
    save_zipformer(exp / "epoch-3.pt", extra={"model_avg": {}, "decode_chunk_len": 32})
    torch.save({"model": {}, "evil": _RunsCode(tmp_path / "pwned")}, exp / "epoch-1.pt")
    config.files.checkpoint, config.files.exp_dir = "", str(exp)
    config.files.epoch, config.files.avg, config.files.use_averaged_model = 3, 2, True
    problems = problems_of(config)
    assert any(str(exp / "epoch-1.pt") in p and "posix.system" in p for p in problems), problems
    assert not (tmp_path / "pwned").exists()


# -- checkpoint selection ----------------------------------------------------------------------------------------------

def test_avg_needing_missing_epoch_files_is_refused_by_name(config, tmp_path):
    exp = tmp_path / "exp"
    save_zipformer(exp / "epoch-3.pt", extra={"decode_chunk_len": 32})
    config.files.checkpoint, config.files.exp_dir, config.files.epoch = "", str(exp), 3
    config.files.avg = 3
    assert any("loads epoch-1.pt, epoch-2.pt, epoch-3.pt, but epoch-1.pt, epoch-2.pt are not in" in p
               for p in problems_of(config))
    config.files.use_averaged_model = True
    assert any("averages from epoch-0.pt, which cannot exist" in p for p in problems_of(config))
    config.files.avg = 1  # epoch-2.pt .. epoch-3.pt: epoch-2.pt missing
    assert any("but epoch-2.pt is not in" in p for p in problems_of(config))
    save_zipformer(exp / "epoch-2.pt")
    assert any("epoch-2.pt has no model_avg" in p for p in problems_of(config))
    config.files.use_averaged_model = False
    run = build_plan(config)
    assert run.plan.steps[2].argv[run.plan.steps[2].argv.index("--avg") + 1] == "1"
    config.files.iter, config.files.avg = 500, 2
    save_zipformer(exp / "checkpoint-400.pt")
    assert any("needs 2 checkpoint-N.pt files with N <= 500" in p and "found 1 (checkpoint-400.pt)" in p
               for p in problems_of(config))


# -- vocabulary, context size, dims -------------------------------------------------------------------------------------

def test_bpe_model_of_another_vocab_is_refused_naming_both_sizes(config):
    config.files.tokens, config.files.bpe_model = "", str(DEMO_BPE)
    assert any(p.startswith("files.bpe_model: ") and "has 128 pieces, but the checkpoint's vocab size is 6 "
               "(decoder.embedding.weight has 6 rows, joiner.output_linear 6 outputs)" in p for p in problems_of(config))
    config.files.ignore_checkpoint_mismatch = True
    assert any("has 128 pieces" in w for w in build_plan(config).warnings)


@pytest.mark.slow
def test_the_export_does_fail_on_a_vocab_mismatch_the_plan_refuses(config, tmp_path):
    # without the plan check the mismatch surfaces only in the export (the stand-in fails as icefall does)
    Path(config.files.tokens).write_text(TOKENS + "d 6\n")
    assert any("has 7 tokens, but the checkpoint's vocab size is 6" in p for p in problems_of(config))
    config.files.ignore_checkpoint_mismatch = True
    status, events = run_plan(until_export(build_plan(config)))
    export = finished(events)["export"]
    assert export.status == "failed" and any("size mismatch for decoder.embedding.weight" in t for t in export.tail)
    assert export.hint.startswith("the vocabulary given to the export has 7 tokens but the checkpoint was trained with 6")


def test_context_size_other_than_2_is_refused(config, tmp_path):
    config.hyperparameters["context-size"] = "1"
    problems = problems_of(config)
    assert any(p.startswith("hyperparameters: --context-size 1: sherpa-ncnn hard-codes a decoder context of 2")
               for p in problems)
    del config.hyperparameters["context-size"]
    save_zipformer(Path(config.files.checkpoint), context_size=1)
    config.files.ignore_checkpoint_mismatch = True  # not a way around it: sherpa-ncnn cannot run the model
    assert any("the checkpoint has decoder context size 1" in p for p in problems_of(config))


def test_non_streaming_zipformer_is_warned_about(config):
    params = {"vocab_size": 6, "feature_dim": 80, "num_encoder_layers": "1,1"}
    save_zipformer(Path(config.files.checkpoint), extra={"model_avg": {}, **params})
    assert any("trained by a non-streaming recipe" in w for w in build_plan(config).warnings)
    save_zipformer(Path(config.files.checkpoint), extra={"model_avg": {}, **params, "decode_chunk_len": 32,
                                                         "short_chunk_size": 50, "num_left_chunks": 4})
    assert not any("non-streaming" in w for w in build_plan(config).warnings)


@pytest.mark.slow
def test_lstm_stateless3_dims_are_checked_against_the_code_that_really_runs(icefall, tmp_path):
    from checkpoint_factory import lstm_state, materialize
    from core.pipeline.config import WizardConfig
    ckpt = tmp_path / "pretrained.pt"
    torch.save({"model": materialize(lstm_state(layers=2, dim=32, hidden=48, ff=64, decoder_dim=8, joiner_dim=8,
                                                vocab=6))}, ckpt)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    config = WizardConfig(arch="lstm", hyperparameters={"num-encoder-layers": "2", "encoder-dim": "32",
                                                         "rnn-hidden-size": "48"})
    config.files.recipe = str(icefall / "egs/librispeech/ASR/lstm_transducer_stateless3")
    config.files.checkpoint, config.files.tokens, config.files.python = str(ckpt), str(tokens), sys.executable
    config.output.dir = str(tmp_path / "out")
    config.validation.numeric = config.validation.decode = False
    problems = problems_of(config)
    for key, have, fixed in (("decoder_dim", 8, 512), ("joiner_dim", 8, 512), ("dim_feedforward", 64, 2048)):
        assert any(f"the checkpoint's {key} is {have}, but the recipe's get_params fixes it at {fixed}" in p
                   for p in problems), problems
    config.files.ignore_checkpoint_mismatch = True  # run anyway: the export fails exactly as the plan said
    status, events = run_plan(until_export(build_plan(config)))
    assert any("size mismatch" in t for t in finished(events)["export"].tail)


# -- validation wavs ---------------------------------------------------------------------------------------------------

def _wav(path: Path, rate: int, seconds: float = 0.5) -> Path:
    n = int(rate * seconds)
    data = b"\0\0" * n
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
                     struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", len(data))
                     + data)
    return path


def test_unusable_validation_wavs_are_refused_by_name(config, tmp_path):
    config.validation.decode = True
    good = _wav(tmp_path / "good.wav", 16000)
    narrow = _wav(tmp_path / "phone.wav", 8000)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    config.validation.wavs = [str(good), str(narrow), str(text), str(tmp_path / "missing.wav")]
    problems = [p for p in problems_of(config) if p.startswith("validation.wavs")]
    assert len(problems) == 3
    assert f"{narrow}: 8000 Hz; sherpa-ncnn models expect 16000 Hz" in problems[0]
    assert f"{text}: not a RIFF/WAVE file" in problems[1] and "missing.wav: cannot be read" in problems[2]
    config.validation.wavs = [str(good)]
    assert build_plan(config)


# -- the wizard's trust tick -------------------------------------------------------------------------------------------

async def test_the_wizard_names_the_global_and_trusting_is_a_tick(tmp_path):
    from core.pipeline.demo import demo_config
    from tests.tui.test_tui import SIZE, review_ready, text, wait_for
    from tui.wizard.app import WizardApp
    config = demo_config("lstm")
    config.output.dir = str(tmp_path / "out")
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "pretrained.pt"
    torch.save({"model": torch.load(config.files.checkpoint, weights_only=True)["model"], "evil": _RunsCode(marker)},
               ckpt)
    config.files.checkpoint = str(ckpt)
    app = WizardApp(config=config)
    async with app.run_test(size=SIZE) as pilot:
        await review_ready(pilot)
        assert app.screen.query_one("#next").disabled and "posix.system" in text(app, "#problems")
        box = app.screen.query_one("#trust-checkpoint")
        assert box.display and not box.value
        assert str(box.label).startswith("Trust pretrained.pt: let icefall's export unpickle it although it needs "
                                         "posix.system")
        box.value = True
        await wait_for(pilot, lambda: app.screen.plan_state == "ok", timeout=60)
        assert app.config.files.trust_checkpoint and not app.screen.query_one("#next").disabled
        assert "trusted (files.trust_checkpoint)" in text(app, "#problems") and not marker.exists()


def test_a_vocab_size_mismatch_in_the_export_blames_the_vocabulary_not_the_flags():
    from core.common.hints import hint_for
    hint = hint_for(["RuntimeError: Error(s) in loading state_dict for Transducer:",
                     "\tsize mismatch for decoder.embedding.weight: copying a param with shape torch.Size([500, 512]) "
                     "from checkpoint, the shape in current model is torch.Size([64, 512])."])
    assert hint.startswith("the vocabulary given to the export has 64 tokens but the checkpoint was trained with 500")
    hint = hint_for(["\tsize mismatch for decoder.embedding.weight: copying a param with shape torch.Size([500, 512]) "
                     "from checkpoint, the shape in current model is torch.Size([500, 320])."])
    assert "don't match the checkpoint" in hint  # same vocab, other dim: the flags
