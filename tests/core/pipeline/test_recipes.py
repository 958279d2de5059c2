"""Every icefall recipe with an ncnn export: the export's own flags (CSJ's --lang), the extra-arguments hatch, and
icefall's own import failures named, on stand-in recipes (tests/fixtures/recipes) that mirror the real scripts."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.pipeline.config import ConfigError, WizardConfig, load_config
from core.common.hints import hint_for
from core.pipeline.plan import build_plan
from core.pipeline.layout import PlanError
from core.pipeline.recipe_script import read_script_args
from test_pipeline import finished, run_plan
from tests.paths import REPO

STANDINS = REPO / "tests" / "fixtures" / "recipes" / "icefall"
ZIPFORMER = "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
MULTI = ZIPFORMER + "_multi"
CSJ = "egs/csj/ASR/pruned_transducer_stateless7_streaming"

# what the real scripts accept (icefall 36e0420c, read from their `--help`): the stand-ins must match
MODEL_FLAGS = {"--num-encoder-layers", "--feedforward-dims", "--nhead", "--encoder-dims", "--attention-dims",
               "--encoder-unmasked-dims", "--zipformer-downsampling-factors", "--cnn-module-kernels", "--decoder-dim",
               "--joiner-dim", "--short-chunk-size", "--num-left-chunks", "--decode-chunk-len"}
SELECTION = {"--epoch", "--iter", "--avg", "--exp-dir", "--context-size", "--use-averaged-model"}
REAL_FLAGS = {ZIPFORMER: SELECTION | MODEL_FLAGS | {"--tokens"}, MULTI: SELECTION | MODEL_FLAGS | {"--tokens"},
              CSJ: SELECTION | MODEL_FLAGS | {"--lang", "--lang-type"}}

HYPER = {"num-encoder-layers": "1,1", "feedforward-dims": "32,32", "nhead": "2,2", "encoder-dims": "16,16",
         "attention-dims": "8,8", "encoder-unmasked-dims": "8,8", "zipformer-downsampling-factors": "1,2",
         "cnn-module-kernels": "7,7", "decoder-dim": "8", "joiner-dim": "8"}
TOKENS = "<blk> 0\n<sos/eos> 1\n<unk> 2\na 3\nb 4\nc 5\n"


@pytest.fixture
def icefall(tmp_path):
    """The stand-in checkout copied (links kept), so running it leaves nothing in the repo."""
    root = tmp_path / "icefall"
    shutil.copytree(STANDINS, root, symlinks=True)
    return root


def save_zipformer(path: Path, *, vocab: int = 6, context_size: int = 2, extra: dict | None = None) -> Path:
    """A real (zero-weight) Zipformer checkpoint with the shapes HYPER describes."""
    import torch
    from checkpoint_factory import materialize, zipformer_state
    sd = materialize(zipformer_state(layers=(1, 1), ff=(32, 32), heads=(2, 2), dims=(16, 16), att=(8, 8), ds=(1, 2),
                                     kernels=(7, 7), decoder_dim=8, joiner_dim=8, vocab=vocab,
                                     context_size=context_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, **(extra or {})}, path)
    return path


def zipformer_config(icefall: Path, recipe: str, tmp_path: Path) -> WizardConfig:
    config = WizardConfig(arch="zipformer", hyperparameters=dict(HYPER))
    config.files.recipe = str(icefall / recipe)
    config.files.checkpoint = str(save_zipformer(tmp_path / "model" / "pretrained.pt"))
    config.files.python = sys.executable
    config.output.dir = str(tmp_path / "out")
    config.validation.numeric = config.validation.decode = False
    return config


def lang_dir(tmp_path: Path, lang_type: str | None = "char", tokens: str = TOKENS) -> Path:
    lang = tmp_path / "data" / "lang_char"
    lang.mkdir(parents=True)
    (lang / "tokens.txt").write_text(tokens)
    if lang_type:
        (lang / "lang_type").write_text(lang_type + "\n")
    return lang


def until_export(planned):
    """The plan cut after the export step (the stand-ins write placeholders pnnx would only refuse)."""
    ids = [s.id for s in planned.plan.steps]
    del planned.plan.steps[ids.index("export") + 1:]
    return planned


def export_argv(planned) -> list[str]:
    return next(s for s in planned.plan.steps if s.id == "export").argv


# -- reading what the export accepts --------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", [ZIPFORMER, MULTI, CSJ])
def test_the_script_flags_are_read_from_its_parser_and_helpers(recipe):
    args = read_script_args(STANDINS / recipe / "export-for-ncnn.py")
    assert args.flags == REAL_FLAGS[recipe]
    assert args.token_flag == ("--lang" if recipe == CSJ else "--tokens")
    names = {p.name for p in args.read}
    assert "do_not_use_it_directly.py" in names and (recipe != CSJ or "tokenizer.py" in names)


def test_a_linked_script_is_read_with_the_helpers_of_the_folder_it_runs_from():
    # lstm_transducer_stateless3/export-for-ncnn.py links into stateless2: stateless2's train.py gives the flags
    args = read_script_args(STANDINS / "egs/librispeech/ASR/lstm_transducer_stateless3/export-for-ncnn.py")
    assert "--decoder-dim" not in args.flags and {"--rnn-hidden-size", "--tokens"} <= args.flags
    assert args.read[-1].parent.name == "lstm_transducer_stateless2"


# -- CSJ: --lang DIR [--lang-type] ------------------------------------------------------------------------------------

def test_csj_export_gets_lang_not_tokens(icefall, tmp_path):
    config = zipformer_config(icefall, CSJ, tmp_path)
    lang = lang_dir(tmp_path)
    config.files.lang = str(lang)
    planned = build_plan(config)
    argv = export_argv(planned)
    assert "--tokens" not in argv and argv[argv.index("--lang") + 1] == str(lang) and "--lang-type" not in argv
    tokens_step = next(s for s in planned.plan.steps if s.id == "tokens")
    assert tokens_step.inputs == [lang / "tokens.txt"]  # sherpa-ncnn's tokens.txt is the lang dir's
    config.files.lang_type = "char"
    argv = export_argv(build_plan(config))
    assert argv[argv.index("--lang-type") + 1] == "char"


@pytest.mark.parametrize("setup,words", [
    (lambda c, t: None, "files.lang: export-for-ncnn.py takes --lang DIR"),
    (lambda c, t: setattr(c.files, "lang", str(lang_dir(t, lang_type=None))), "files.lang_type: not set, and"),
    (lambda c, t: (setattr(c.files, "lang", str(lang_dir(t))), setattr(c.files, "lang_type", "bpe")),
     "has no bpe.model (lang type bpe reads it)"),
    (lambda c, t: setattr(c.files, "lang", str(lang_dir(t, lang_type="word"))), "lang_type says 'word'"),
])
def test_csj_lang_problems_are_named_before_anything_runs(icefall, tmp_path, setup, words):
    config = zipformer_config(icefall, CSJ, tmp_path)
    setup(config, tmp_path)
    with pytest.raises(PlanError) as err:
        build_plan(config)
    assert any(words in p for p in err.value.problems), err.value.problems
    assert not (tmp_path / "out").exists()


def test_csj_vocab_mismatch_names_both_numbers(icefall, tmp_path):
    config = zipformer_config(icefall, CSJ, tmp_path)
    config.files.lang = str(lang_dir(tmp_path, tokens=TOKENS + "d 6\n"))
    with pytest.raises(PlanError) as err:
        build_plan(config)
    assert any(p.startswith("files.lang: ") and "has 7 tokens, but the checkpoint's vocab size is 6" in p
               for p in err.value.problems)


@pytest.mark.slow
def test_csj_export_runs_with_lang_and_the_old_tokens_command_fails_with_a_fair_hint(icefall, tmp_path):
    config = zipformer_config(icefall, CSJ, tmp_path)
    config.files.lang = str(lang_dir(tmp_path))
    planned = until_export(build_plan(config))
    status, events = run_plan(planned)
    f = finished(events)
    assert f["export"].status == "ok", f["export"].tail
    assert (planned.out_dir / "work" / "exp" / "encoder_jit_trace-pnnx.pt").is_file()
    # what the wizard ran before: --tokens, which CSJ's parser does not take
    proc = subprocess.run([sys.executable, str(icefall / CSJ / "export-for-ncnn.py"), "--tokens", "tokens.txt"],
                          cwd=icefall / "egs/csj/ASR", env={"PYTHONPATH": str(icefall), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and lines[-1] == "export-for-ncnn.py: error: unrecognized arguments: --tokens tokens.txt"
    hint = hint_for(lines)
    assert "extra_args" in hint and "files.lang" in hint and "older" not in hint


# -- icefall's own failure: the multi-dataset recipe ------------------------------------------------------------------

@pytest.mark.slow
def test_multi_recipe_import_error_is_named_as_icefalls_own_with_the_sibling(icefall, tmp_path):
    config = zipformer_config(icefall, MULTI, tmp_path)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    config.files.tokens = str(tokens)
    status, events = run_plan(until_export(build_plan(config)))
    export = finished(events)["export"]
    assert status == "failed" and export.status == "failed"
    assert any("cannot import name 'LibriSpeechAsrDataModule'" in line for line in export.tail)
    assert export.hint.startswith("this failure is icefall's own, not your files or flags")
    assert f"{icefall / ZIPFORMER} (set files.recipe to it" in export.hint
    assert "do_not_use_it_directly.py (line 6)" in export.hint and "extra_args" in export.hint
    # the workaround works: the sibling recipe exports the same checkpoint
    config.files.recipe = str(icefall / ZIPFORMER)
    config.output.dir = str(tmp_path / "out2")
    status, events = run_plan(until_export(build_plan(config)))
    assert finished(events)["export"].status == "ok"


def test_import_errors_of_the_environment_keep_their_own_hint(icefall):
    lines = ["Traceback (most recent call last):",
             f'  File "{icefall / ZIPFORMER / "export-for-ncnn.py"}", line 3, in <module>',
             "ModuleNotFoundError: No module named 'k2'"]
    assert "icefall's Python environment" in hint_for(lines)
    lines[-1] = "ModuleNotFoundError: No module named 'asr_datamodule'"  # a recipe module (the sibling has one)
    (icefall / MULTI / "asr_datamodule.py").unlink()
    lines[1] = f'  File "{icefall / MULTI / "do_not_use_it_directly.py"}", line 6, in <module>'
    assert hint_for(lines).startswith("this failure is icefall's own")


# -- the extra-arguments hatch ----------------------------------------------------------------------------------------

def test_extra_args_are_appended_and_checked(icefall, tmp_path, cli):
    config = zipformer_config(icefall, CSJ, tmp_path)
    config.files.lang = str(lang_dir(tmp_path))
    config.export.extra_args = ["--lang-type", "char"]
    planned = build_plan(config)
    assert export_argv(planned)[-2:] == ["--lang-type", "char"]
    assert not any("extra_args" in w for w in planned.warnings)
    config.export.extra_args = ["--no-such-flag=1", "--epoch", "7"]
    planned = build_plan(config)
    assert any("has no --no-such-flag" in w for w in planned.warnings)
    assert any("--epoch is also set by the wizard" in w for w in planned.warnings)
    config.export.extra_args = ["--decode-chunk-len=64"]
    with pytest.raises(PlanError, match="--decode-chunk-len is a model hyperparameter"):
        build_plan(config)
    # wizard.toml [export] extra_args and run --export-arg (appended)
    config.export.extra_args = ["--lang-type"]
    path = tmp_path / "wizard.toml"
    config.save(path)
    assert load_config(path).export.extra_args == ["--lang-type"]
    code, out, err = cli("run", "--config", path, "--dry-run", "--export-arg=char")
    assert code == 0, err
    assert "--lang-type char" in out.replace("\n", " ")


def test_config_lang_keys(tmp_path):
    path = tmp_path / "cfg" / "wizard.toml"
    path.parent.mkdir()
    path.write_text('arch = "zipformer"\n[files]\nlang = "data/lang_char"\nlang_type = "char"\ntrust_checkpoint = true\n'
                    '[export]\nextra_args = ["--x", "1"]\n')
    c = load_config(path)
    assert c.files.lang == str(tmp_path / "cfg" / "data" / "lang_char") and c.files.trust_checkpoint
    assert c.export.extra_args == ["--x", "1"]
    path.write_text('arch = "zipformer"\n[files]\nlang_type = "word"\n')
    with pytest.raises(ConfigError, match="files.lang_type = 'word' is not one of 'char', 'bpe'"):
        load_config(path)
    path.write_text('arch = "zipformer"\n[export]\nextra_args = "--x"\n')
    with pytest.raises(ConfigError, match="export.extra_args must be a list of strings"):
        load_config(path)


def test_csj_lang_dir_is_taken_from_the_tokens_folder_when_not_given(icefall, tmp_path):
    # the wizard's form asks for tokens.txt / bpe.model: their folder is the lang dir, the file says its type
    config = zipformer_config(icefall, CSJ, tmp_path)
    lang = lang_dir(tmp_path, lang_type=None)
    config.files.tokens = str(lang / "tokens.txt")
    planned = build_plan(config)
    argv = export_argv(planned)
    assert argv[argv.index("--lang") + 1] == str(lang) and argv[argv.index("--lang-type") + 1] == "char"
    assert any("files.lang: not set" in w and str(lang) in w for w in planned.warnings)
    config.files.tokens = str(tmp_path / "elsewhere.txt")  # not a lang dir's tokens.txt: asked for
    (tmp_path / "elsewhere.txt").write_text(TOKENS)
    with pytest.raises(PlanError, match="files.lang: export-for-ncnn.py takes --lang DIR"):
        build_plan(config)
