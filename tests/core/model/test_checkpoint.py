"""Checkpoint detection: safe loading, architecture and hyperparameters from the weights, presets, detect CLI."""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import tomllib
from pathlib import Path

import pytest

from checkpoint_factory import (conv_emformer_state, lstm_state, materialize, zipformer2_state, zipformer_state)
from core.model.architectures import get_arch, resolve
from core.model.checkpoint import (DEFAULT, TRAINING, WEIGHTS, CheckpointError, UnsafeCheckpointError,
                             UnsupportedArchitectureError, check_against, check_tokens, detect, detect_from_state)
from tests.paths import REPO

torch = pytest.importorskip("torch")

DEMO_MODELS = REPO / "assets" / "demo" / "models"


def _values(det):
    return {n: d.value for n, d in det.values.items()}


# -- Zipformer v1 --------------------------------------------------------------------------------------------

ZIPFORMER_CASES = [
    dict(),  # the default 5-stack 70M model
    dict(layers=(2, 2), ff=(768, 1024), heads=(4, 8), dims=(256, 256), att=(128, 192), ds=(1, 2), kernels=(15, 31),
         decoder_dim=256, joiner_dim=320, vocab=1000, context_size=2),
    dict(layers=(2, 2, 2, 2, 2), ff=(768,) * 5, heads=(4,) * 5, dims=(256,) * 5, att=(192,) * 5, ds=(1, 2, 4, 8, 2),
         kernels=(31,) * 5, vocab=6254),  # the bilingual 20M-style model
    dict(layers=(3,), ff=(64,), heads=(2,), dims=(32,), att=(16,), ds=(1,), kernels=(7,), decoder_dim=32,
         joiner_dim=32, vocab=64, context_size=1),
]


@pytest.mark.parametrize("case", ZIPFORMER_CASES)
def test_zipformer_hyperparameters_recovered_exactly(case):
    det = detect_from_state(zipformer_state(**case))
    assert det.arch.name == "zipformer"
    full = dict(layers=(2, 4, 3, 2, 4), ff=(1024, 1024, 2048, 2048, 1024), heads=(8,) * 5, dims=(384,) * 5,
                att=(192,) * 5, ds=(1, 2, 4, 8, 2), kernels=(31,) * 5, decoder_dim=512, joiner_dim=512, vocab=500,
                context_size=2) | case
    v = _values(det)
    assert v["num_encoder_layers"] == full["layers"]
    assert v["feedforward_dims"] == full["ff"]
    assert v["nhead"] == full["heads"]
    assert v["encoder_dims"] == full["dims"]
    assert v["attention_dims"] == full["att"]
    assert v["zipformer_downsampling_factors"] == full["ds"]
    assert v["cnn_module_kernels"] == full["kernels"]
    assert v["decoder_dim"] == full["decoder_dim"] and v["joiner_dim"] == full["joiner_dim"]
    assert v["context_size"] == full["context_size"]
    assert det.vocab_size == full["vocab"]
    for name in ("num_encoder_layers", "encoder_dims", "decoder_dim", "context_size"):
        assert det.values[name].source == WEIGHTS
    for name in ("decode_chunk_len", "num_left_chunks", "encoder_unmasked_dims"):
        assert det.values[name].source == DEFAULT and "not in the weights" in det.values[name].note
    # defaults are shaped to the model: one value per stack, unmasked dims <= encoder dims
    assert len(v["encoder_unmasked_dims"]) == len(full["layers"])
    assert all(u <= d for u, d in zip(v["encoder_unmasked_dims"], full["dims"]))
    # what detection proposes is a valid configuration
    assert resolve(det.arch, {det.arch.param(n).flag: val for n, val in v.items()}).ok


# -- ConvEmformer --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers,dim,ff,kernel,ctx", [(12, 512, 2048, 31, 2), (6, 256, 1024, 15, 2), (2, 32, 64, 7, 1)])
def test_conv_emformer_hyperparameters_recovered(layers, dim, ff, kernel, ctx):
    det = detect_from_state(conv_emformer_state(layers=layers, dim=dim, ff=ff, kernel=kernel, context_size=ctx,
                                                decoder_dim=512, joiner_dim=512))
    v = _values(det)
    assert det.arch.name == "conv-emformer"
    assert (v["num_encoder_layers"], v["encoder_dim"], v["dim_feedforward"], v["cnn_module_kernel"],
            v["context_size"]) == (layers, dim, ff, kernel, ctx)
    for name in ("nhead", "left_context_length", "chunk_length", "right_context_length", "memory_size"):
        assert det.values[name].source == DEFAULT and not det.values[name].in_weights
    assert det.extras["decoder_dim"] == 512 and not det.warnings


# -- LSTM ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers,dim,hidden", [(12, 512, 1024), (4, 320, 320), (2, 32, 48)])
def test_lstm_hyperparameters_recovered_with_and_without_projection(layers, dim, hidden):
    det = detect_from_state(lstm_state(layers=layers, dim=dim, hidden=hidden))
    v = _values(det)
    assert det.arch.name == "lstm"
    assert (v["num_encoder_layers"], v["encoder_dim"], v["rnn_hidden_size"]) == (layers, dim, hidden)
    assert det.extras["proj_size"] == (dim if hidden > dim else 0)
    assert det.extras["dim_feedforward"] == 2048


def test_lstm_giga_heads_warn():
    det = detect_from_state(lstm_state(layers=2, giga=True))
    assert det.extras["giga_heads"] and any("giga" in w for w in det.warnings)


# -- formats, prefixes, unsupported ----------------------------------------------------------------------------

def test_module_prefix_is_stripped(tmp_path):
    sd = {"module." + k: v for k, v in materialize(lstm_state(layers=3, dim=16, hidden=32, ff=8, decoder_dim=8,
                                                              joiner_dim=8, vocab=10)).items()}
    torch.save({"model": sd}, tmp_path / "pretrained.pt")
    det = detect(tmp_path / "pretrained.pt")
    assert det.arch.name == "lstm" and _values(det)["num_encoder_layers"] == 3 and det.kind == "pretrained"


def test_bare_state_dict_and_legacy_format(tmp_path):
    sd = materialize(conv_emformer_state(layers=2, dim=16, ff=8, kernel=5, decoder_dim=8, joiner_dim=8, vocab=10))
    torch.save(sd, tmp_path / "bare.pt", _use_new_zipfile_serialization=False)  # no mmap possible
    det = detect(tmp_path / "bare.pt")
    assert det.kind == "state_dict" and _values(det)["cnn_module_kernel"] == 5


def _epoch_file(tmp_path, **params):
    sd = materialize(zipformer_state(layers=(2, 2), ff=(64, 64), heads=(2, 2), dims=(32, 32), att=(16, 16),
                                     ds=(1, 2), kernels=(7, 7), decoder_dim=32, joiner_dim=32, vocab=20))
    ckpt = {"model": sd, "model_avg": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.05}]},
            "scheduler": {"base_lrs": [0.05]}, "grad_scaler": None, "sampler": {"epoch": 3},
            "exp_dir": pathlib.PosixPath("/exp"), "best_train_loss": 0.5, "feature_dim": 80, **params}
    path = tmp_path / "epoch-30.pt"
    torch.save(ckpt, path)
    return path


def test_epoch_file_training_params_preferred_and_disagreement_reported(tmp_path):
    path = _epoch_file(tmp_path, num_encoder_layers="2,2", encoder_dims="32,32", decode_chunk_len=64,
                       num_left_chunks=2, encoder_unmasked_dims="24,24", nhead="2,4", vocab_size=20, blank_id=0)
    det = detect(path)  # PosixPath in exp_dir is on the allowlist
    assert det.kind == "training"
    v = det.values
    assert v["decode_chunk_len"].value == 64 and v["decode_chunk_len"].source == TRAINING
    assert v["num_left_chunks"].value == 2
    assert v["encoder_unmasked_dims"].value == (24, 24) and v["encoder_unmasked_dims"].source == TRAINING
    assert v["num_encoder_layers"].source == TRAINING and v["feedforward_dims"].source == WEIGHTS
    # nhead: training params say 2,4 but the weights have 2,2
    assert v["nhead"].value == (2, 4) and v["nhead"].weights_value == (2, 2)
    assert det.disagreements == ["--nhead: the training params say 2,4, the weights have 2,2 (the export loads the "
                                 "weights, so it will fail or be wrong with the training value)"]


# -- safety ----------------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_never_runs(tmp_path, cli, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "pretrained.pt"
    torch.save({"model": materialize(lstm_state(layers=1, dim=8, hidden=8, ff=4, decoder_dim=4, joiner_dim=4,
                                               vocab=5)), "evil": _Evil(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as err:
        detect(path)
    assert not marker.exists()
    assert err.value.types == ["posix.system"] and "posix.system" in str(err.value) and "--trust" in str(err.value)
    code, out, _ = cli("detect", path, "--json")
    assert code == 2 and json.loads(out)["reason"] == "refused" and not marker.exists()
    code, _, err_text = cli("detect", path)
    assert code == 2 and "posix.system" in err_text and not marker.exists()
    # the pickle is live: with the explicit trust switch it does run (which is why the default refuses it)
    assert detect(path, trust=True).arch.name == "lstm"
    assert marker.exists()


def test_garbage_and_missing_files(tmp_path, cli):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"checkpoint bytes")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        detect(bad)
    assert cli("detect", bad)[0] == 2
    assert cli("detect", tmp_path / "missing.pt")[0] == 2


def test_zipformer2_refused_with_pointer_to_sherpa_onnx(tmp_path, cli):
    with pytest.raises(UnsupportedArchitectureError, match="sherpa-onnx"):
        detect_from_state(zipformer2_state())
    torch.save({"model": materialize(zipformer2_state())}, tmp_path / "z2.pt")
    code, out, _ = cli("detect", tmp_path / "z2.pt", "--json")
    assert code == 2 and json.loads(out)["reason"] == "unsupported" and "Zipformer2" in json.loads(out)["error"]


def test_unknown_architecture(tmp_path, cli):
    torch.save({"model": {"encoder.foo.weight": torch.zeros(2)}}, tmp_path / "x.pt")
    with pytest.raises(UnsupportedArchitectureError, match="not a streaming Zipformer v1, ConvEmformer or LSTM"):
        detect(tmp_path / "x.pt")
    assert cli("detect", tmp_path / "x.pt")[0] == 2


# -- the bundled demo checkpoints --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["zipformer", "conv-emformer", "lstm"])
def test_demo_checkpoints_detected(arch):
    det = detect(DEMO_MODELS / arch / "exp" / "pretrained.pt")
    assert det.arch.name == arch
    words = (DEMO_MODELS / arch / "flags.txt").read_text().split()
    flags = dict(zip(words[::2], words[1::2]))
    spec = get_arch(arch)
    for flag, text in flags.items():
        hp = spec.param(flag)
        if hp.in_weights:
            assert det.values[hp.name].value == hp.parse(text), flag
            assert det.values[hp.name].source == WEIGHTS
    assert check_against(flags, det) == []
    assert check_tokens(DEMO_MODELS / arch / "data" / "lang_bpe_500" / "tokens.txt", det) == []


# -- check_against ---------------------------------------------------------------------------------------------

def test_mismatch_names_flag_stack_and_checkpoint_value():
    det = detect_from_state(zipformer_state(dims=(384, 384, 256, 256, 256), att=(192, 192, 128, 128, 128)))
    got = check_against({"--encoder-dims": "384,384,384,384,384", "--attention-dims": "192,192,128,128,128",
                         "--num-encoder-layers": "2,4,3,2"}, det)
    messages = [m.message for m in got]
    assert "--encoder-dims says 384 for stack 2, the checkpoint has 256" in messages
    assert "--encoder-dims says 384 for stack 3, the checkpoint has 256" in messages
    assert "--num-encoder-layers says 2,4,3,2 (4 stacks), the checkpoint has 2,4,3,2,4 (5 stacks)" in messages
    assert not any("--attention-dims" in m for m in messages)
    assert all(m.severity == "error" for m in got)


def test_mismatch_from_config_defaults_and_values_not_revealed():
    from core.pipeline.config import WizardConfig
    det = detect_from_state(lstm_state(layers=2, dim=32, hidden=48))
    config = WizardConfig(arch="lstm", hyperparameters={"encoder-dim": "32"})
    messages = [m.message for m in check_against(config, det)]
    assert messages == ["--num-encoder-layers says 12 (icefall's default; not set), the checkpoint has 2",
                        "--rnn-hidden-size says 1024 (icefall's default; not set), the checkpoint has 48"]
    # values the checkpoint cannot reveal are never mismatches
    det = detect_from_state(conv_emformer_state(layers=2, dim=32, ff=64, kernel=7))
    assert check_against({"--num-encoder-layers": "2", "--encoder-dim": "32", "--dim-feedforward": "64",
                          "--cnn-module-kernel": "7", "--memory-size": "32", "--nhead": "4",
                          "--chunk-length": "16"}, det) == []
    # a different architecture is one clear mismatch
    wrong = check_against(WizardConfig(arch="zipformer"), det)
    assert [m.message for m in wrong] == ["arch says zipformer, the checkpoint is a ConvEmformer (conv-emformer)"]


def test_training_param_only_values_are_warnings(tmp_path):
    sd = materialize(conv_emformer_state(layers=2, dim=16, ff=8, kernel=5, decoder_dim=8, joiner_dim=8, vocab=10))
    torch.save({"model": sd, "memory_size": 32, "nhead": 4, "exp_dir": pathlib.PosixPath("x")}, tmp_path / "e.pt")
    det = detect(tmp_path / "e.pt")
    assert det.values["memory_size"].value == 32 and det.values["memory_size"].source == TRAINING
    got = check_against({"--memory-size": "0", "--encoder-dim": "32"}, det)
    assert [(m.flag, m.severity) for m in got] == [("--encoder-dim", "error"), ("--memory-size", "warning")]
    assert "--memory-size says 0, the checkpoint has 32 (from its training params)" in [m.message for m in got]


# -- tokens ----------------------------------------------------------------------------------------------------

def test_tokens_validated_against_vocab(tmp_path):
    det = detect_from_state(lstm_state(layers=2, dim=32, hidden=48, vocab=5))
    good = tmp_path / "good.txt"
    good.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\nA 3\nB 4\n#0 5\n")
    assert check_tokens(good, det) == []
    short = tmp_path / "short.txt"
    short.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\nA 3\n")
    assert check_tokens(short, det) == [f"{short} has 4 tokens, but the checkpoint's vocab size is 5 "
                                        "(decoder.embedding.weight); this tokens.txt belongs to another model"]
    blank = tmp_path / "blank.txt"
    blank.write_text("A 0\n<blk> 1\n<unk> 2\nB 3\nC 4\n")
    assert any("id 0" in p and "<blk>" in p for p in check_tokens(blank, det))


# -- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_detect_json_and_toml(cli):
    path = DEMO_MODELS / "zipformer" / "exp" / "pretrained.pt"
    code, out, err = cli("detect", path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["arch"] == "zipformer" and data["usable"] is True
    assert data["values"]["--encoder-dims"] == {"value": "64,64,64", "source": "weights", "in_weights": True}
    assert data["values"]["--decode-chunk-len"]["source"] == "default"
    assert data["extras"]["vocab_size"] == 128
    assert "--num-encoder-layers" in data["flags"]
    code, out, _ = cli("detect", path, "--toml")
    assert code == 0
    fragment = tomllib.loads(out)
    assert fragment["arch"] == "zipformer" and fragment["hyperparameters"]["encoder-dims"] == "64,64,64"
    from core.pipeline.config import config_from_dict
    config = config_from_dict(fragment)  # usable in wizard.toml as is
    assert resolve(get_arch(config.arch), config.hyperparameter_flags()).ok
    code, out, _ = cli("detect", path)
    assert code == 0 and "--encoder-dims" in out and "weights" in out and "not in the weights" in out


def test_cli_presets(cli):
    code, out, _ = cli("presets", "--json")
    assert code == 0
    names = [p["name"] for p in json.loads(out)["presets"]]
    assert "icefall-asr-librispeech-pruned-transducer-stateless7-streaming-2022-12-29" in names
    code, out, _ = cli("presets")
    assert code == 0 and "export-ncnn-lstm.rst" in out


# -- presets ---------------------------------------------------------------------------------------------------

def test_presets_resolve_and_match_checkpoints_of_that_shape():
    from core.model.presets import PRESETS, get_preset
    assert len(PRESETS) >= 3
    for preset in PRESETS.values():
        r = preset.resolve()
        assert r.ok, (preset.name, r.errors)
        assert preset.source and preset.description and preset.arch in ("zipformer", "conv-emformer", "lstm")
    states = {
        "icefall-asr-librispeech-pruned-transducer-stateless7-streaming-2022-12-29": zipformer_state(),
        "icefall-asr-librispeech-conv-emformer-transducer-stateless2-2022-07-05": conv_emformer_state(),
        "icefall-asr-librispeech-lstm-transducer-stateless2-2022-09-03": lstm_state(),
        "k2fsa-zipformer-chinese-english-mixed": zipformer_state(ff=(1024, 1024, 1536, 1536, 1024), vocab=6254),
    }
    for name, sd in states.items():
        assert check_against(get_preset(name).flags, detect_from_state(sd)) == [], name
    with pytest.raises(KeyError, match="did you mean"):
        get_preset("icefall-asr-librispeech-lstm-transducer-stateless2")


# -- pipeline ----------------------------------------------------------------------------------------------------

def test_pipeline_refuses_mismatch_unless_confirmed(tmp_path):
    from core.pipeline.demo import demo_config
    from core.pipeline.plan import build_plan
    from core.pipeline.layout import PlanError
    config = demo_config("lstm")
    have = config.hyperparameters["rnn-hidden-size"]
    config.hyperparameters["rnn-hidden-size"] = "200"
    with pytest.raises(PlanError) as err:
        build_plan(config, out_dir=tmp_path / "out")
    assert any(f"--rnn-hidden-size says 200, the checkpoint has {have}" in p for p in err.value.problems)
    config.files.ignore_checkpoint_mismatch = True
    run = build_plan(config, out_dir=tmp_path / "out")
    assert any("--rnn-hidden-size says 200" in w for w in run.warnings)
    config = demo_config("lstm")
    assert not [w for w in build_plan(config, out_dir=tmp_path / "out2").warnings if "checkpoint" in w]


# -- models built by the demo recipes' own code (icefall's module and parameter names) -------------------------

RECIPE_VARIANTS = [
    ("zipformer", ["--num-encoder-layers", "1,2", "--feedforward-dims", "48,64", "--nhead", "2,4",
                   "--encoder-dims", "32,32", "--attention-dims", "16,32", "--encoder-unmasked-dims", "16,16",
                   "--zipformer-downsampling-factors", "1,2", "--cnn-module-kernels", "5,9", "--decoder-dim", "24",
                   "--joiner-dim", "40", "--context-size", "1"]),
    ("zipformer", ["--num-encoder-layers", "2,1,1,2", "--feedforward-dims", "64,64,96,64", "--nhead", "2,2,2,2",
                   "--encoder-dims", "48,48,48,48", "--attention-dims", "16,16,16,16",
                   "--encoder-unmasked-dims", "16,16,16,16", "--zipformer-downsampling-factors", "1,2,4,2",
                   "--cnn-module-kernels", "7,7,3,7", "--decoder-dim", "32", "--joiner-dim", "32"]),
    ("conv-emformer", ["--num-encoder-layers", "3", "--encoder-dim", "48", "--nhead", "4", "--dim-feedforward", "80",
                       "--cnn-module-kernel", "5", "--memory-size", "8"]),
    ("lstm", ["--num-encoder-layers", "3", "--encoder-dim", "40", "--rnn-hidden-size", "40"]),  # no projection
    ("lstm", ["--num-encoder-layers", "1", "--encoder-dim", "24", "--rnn-hidden-size", "64"]),
]


@pytest.mark.parametrize("arch,flags", RECIPE_VARIANTS)
def test_models_built_by_the_recipe_code_are_detected(arch, flags):
    import importlib.util
    spec_ = importlib.util.spec_from_file_location("make_demo_assets", REPO / "assets" / "demo" / "make_demo_assets.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    tokens = DEMO_MODELS / arch / "data" / "lang_bpe_500" / "tokens.txt"
    model = mod.build_model(arch, flags, tokens)
    det = detect_from_state(model.state_dict())
    assert det.arch.name == arch
    given = dict(zip(flags[::2], flags[1::2]))
    for flag, text in given.items():
        hp = det.arch.param(flag)
        if hp.in_weights:
            assert det.values[hp.name].value == hp.parse(text), flag
    assert [m for m in check_against(given, det) if m.severity == "error"] == []
    assert check_tokens(tokens, det) == []


def test_pipeline_unreadable_checkpoint_is_refused_unless_trusted_zipformer2_a_problem(tmp_path):
    from core.pipeline.demo import demo_config
    from core.pipeline.plan import build_plan
    from core.pipeline.layout import PlanError
    config = demo_config("zipformer")
    garbage = tmp_path / "pretrained.pt"
    garbage.write_bytes(b"checkpoint bytes")
    config.files.checkpoint = str(garbage)
    with pytest.raises(PlanError) as err:  # icefall's export would unpickle what the safe loader cannot read
        build_plan(config, out_dir=tmp_path / "out")
    assert any(str(garbage) in p and "--trust-checkpoint" in p for p in err.value.problems)
    config.files.trust_checkpoint = True
    run = build_plan(config, out_dir=tmp_path / "out")
    assert any(w.startswith("files.checkpoint: not checked against the hyperparameters") for w in run.warnings)
    config.files.trust_checkpoint = False
    z2 = tmp_path / "z2.pt"
    torch.save({"model": materialize(zipformer2_state())}, z2)
    config.files.checkpoint = str(z2)
    with pytest.raises(PlanError) as err:
        build_plan(config, out_dir=tmp_path / "out")
    assert any("Zipformer2" in p and "sherpa-onnx" in p for p in err.value.problems)


def test_pipeline_checks_tokens_and_recipe_fixed_dims(tmp_path):
    from core.pipeline.demo import demo_config
    from core.pipeline.plan import build_plan
    from core.model.checkpoint import detect
    from core.pipeline.layout import PlanError
    config = demo_config("conv-emformer")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\nA 3\n")
    config.files.tokens, config.files.bpe_model = str(tokens), ""
    with pytest.raises(PlanError) as err:
        build_plan(config, out_dir=tmp_path / "out")
    vocab = detect(config.files.checkpoint).vocab_size
    assert any(f"has 4 tokens, but the checkpoint's vocab size is {vocab}" in p for p in err.value.problems)
    # the demo recipe fixes decoder_dim/joiner_dim at 32 like its checkpoint: no warning; upstream's 512 would warn
    from core.pipeline.plan import _fixed_dim_warnings
    det = detect(config.files.checkpoint)
    assert _fixed_dim_warnings(Path(config.files.recipe), det) == []
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "do_not_use_it_directly.py").write_text('params = {"decoder_dim": 512, "joiner_dim": 512}\n')
    assert _fixed_dim_warnings(recipe, det) == [
        f"files.checkpoint: the checkpoint's {key} is 32, but the recipe's get_params fixes it at 512 "
        f"({recipe / 'do_not_use_it_directly.py'}, the code icefall's export runs); the export will fail with a size "
        "mismatch: edit it to 32 there" for key in ("decoder_dim", "joiner_dim")]


def test_detect_names_the_matching_published_model(tmp_path, cli):
    from core.model.presets import matching_presets
    names = [p.name for p in matching_presets(detect_from_state(zipformer_state()))]
    assert names == ["icefall-asr-librispeech-pruned-transducer-stateless7-streaming-2022-12-29"]
    names = [p.name for p in matching_presets(detect_from_state(zipformer_state(ff=(1024, 1024, 1536, 1536, 1024))))]
    assert names == ["k2fsa-zipformer-chinese-english-mixed"]
    assert matching_presets(detect_from_state(lstm_state(layers=6))) == []
    names = [p.name for p in matching_presets(detect_from_state(lstm_state()))]
    assert names == ["icefall-asr-librispeech-lstm-transducer-stateless2-2022-09-03"]
    code, out, _ = cli("detect", DEMO_MODELS / "lstm" / "exp" / "pretrained.pt", "--json")
    assert code == 0 and json.loads(out)["matching_presets"] == []
