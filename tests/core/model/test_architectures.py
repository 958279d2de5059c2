"""Architecture specs: icefall's flags and defaults, validation, and the metadata line."""
import shlex

import pytest

from core.model.architectures import ARCHITECTURES, get_arch, resolve
from core.model.metadata import build_metadata

from conftest import fixture_flags

PAD = "SherpaMetaData           sherpa_meta_data1        0 0 "

# The export commands of icefall's three export-ncnn-*.rst pages, and the line each page tells you to paste.
DOC_EXAMPLES = {
    "zipformer": (
        """--bpe-model $dir/data/lang_bpe_500/bpe.model --exp-dir $dir/exp --use-averaged-model 0 --epoch 99
        --avg 1 --decode-chunk-len 32 --num-left-chunks 4 --num-encoder-layers "2,4,3,2,4"
        --feedforward-dims "1024,1024,2048,2048,1024" --nhead "8,8,8,8,8" --encoder-dims "384,384,384,384,384"
        --attention-dims "192,192,192,192,192" --encoder-unmasked-dims "256,256,256,256,256"
        --zipformer-downsampling-factors "1,2,4,8,2" --cnn-module-kernels "31,31,31,31,31" --decoder-dim 512
        --joiner-dim 512""",
        PAD + "0=2 1=32 2=4 3=7 15=1 -23316=5,2,4,3,2,4 -23317=5,384,384,384,384,384 -23318=5,192,192,192,192,192 "
              "-23319=5,1,2,4,8,2 -23320=5,31,31,31,31,31",
    ),
    "conv-emformer": (
        """--exp-dir $dir/exp --bpe-model $dir/data/lang_bpe_500/bpe.model --epoch 30 --avg 1 --use-averaged-model 0
        --num-encoder-layers 12 --chunk-length 32 --cnn-module-kernel 31 --left-context-length 32
        --right-context-length 8 --memory-size 32 --encoder-dim 512""",
        PAD + "0=1 1=12 2=32 3=31 4=8 5=32 6=8 7=512",
    ),
    "lstm": (
        """--exp-dir $dir/exp --bpe-model $dir/data/lang_bpe_500/bpe.model --epoch 99 --avg 1
        --use-averaged-model 0 --num-encoder-layers 12 --encoder-dim 512 --rnn-hidden-size 1024""",
        PAD + "0=3 1=12 2=512 3=1024",
    ),
}

EXPORT_ONLY = {"--bpe-model", "--exp-dir", "--use-averaged-model", "--epoch", "--avg"}


def model_flags(cmdline: str) -> dict:
    words = shlex.split(cmdline)
    pairs = dict(zip(words[0::2], words[1::2]))
    return {k: v for k, v in pairs.items() if k not in EXPORT_ONLY}


@pytest.mark.parametrize("arch", sorted(DOC_EXAMPLES))
def test_icefall_doc_examples_come_out_character_for_character(arch):
    cmdline, expected = DOC_EXAMPLES[arch]
    resolved = resolve(get_arch(arch), model_flags(cmdline))
    assert resolved.errors == []
    assert build_metadata(resolved).line == expected


@pytest.mark.parametrize("arch,expected", [
    ("conv-emformer", "0=1 1=4 2=32 3=31 4=8 5=32 6=8 7=144"),
    ("lstm", "0=3 1=3 2=192 3=384"),
    ("zipformer", "0=2 1=32 2=4 3=7 15=1 -23316=5,2,2,2,2,2 -23317=5,128,128,128,128,128 "
                  "-23318=5,64,64,64,64,64 -23319=5,1,2,4,8,2 -23320=5,31,31,31,31,31"),
])
def test_real_fixture_flags_give_the_metadata_that_loads_in_sherpa_ncnn(arch, expected):
    flags = fixture_flags(arch)
    resolved = resolve(get_arch(arch), dict(zip(flags[0::2], flags[1::2])))
    assert build_metadata(resolved).line == PAD + expected


def test_defaults_are_icefalls():
    z = get_arch("zipformer").defaults()
    assert z["num_encoder_layers"] == (2, 4, 3, 2, 4)
    assert z["feedforward_dims"] == (1024, 1024, 2048, 2048, 1024)
    assert z["decode_chunk_len"] == 32 and z["num_left_chunks"] == 4 and z["context_size"] == 2
    e = get_arch("conv-emformer").defaults()
    assert (e["memory_size"], e["left_context_length"], e["chunk_length"], e["right_context_length"]) == (0, 32, 32, 8)
    assert e["encoder_dim"] == 512 and e["num_encoder_layers"] == 12 and e["nhead"] == 8
    lstm = get_arch("lstm").defaults()
    assert (lstm["num_encoder_layers"], lstm["encoder_dim"], lstm["rnn_hidden_size"]) == (12, 512, 1024)


def test_every_spec_names_icefall_flags_and_metadata_keys():
    for spec in ARCHITECTURES.values():
        assert spec.export_script.endswith("export-for-ncnn.py")
        for hp in spec.hyperparams:
            assert hp.flag.startswith("--") and hp.help and hp.kind in ("int", "int_list")
        keys = [e.key for e in spec.metadata(spec.defaults())]
        assert keys[0] == 0 and len(keys) == len(set(keys))
        assert all(k < 30 for k in keys)


def test_sources_mark_given_and_default_values():
    r = resolve(get_arch("lstm"), {"--encoder-dim": "256"})
    assert r.sources["encoder_dim"] == "given"
    assert r.sources["rnn_hidden_size"] == "default"
    assert "--rnn-hidden-size" in r.defaulted_flags() and "--encoder-dim" not in r.defaulted_flags()


@pytest.mark.parametrize("text", ["2,4,3,2,4", '"2,4,3,2,4"', "2, 4, 3, 2, 4", " 2,4,3,2,4 "])
def test_list_flags_accept_icefall_syntax(text):
    r = resolve(get_arch("zipformer"), {"--num-encoder-layers": text})
    assert r.values["num_encoder_layers"] == (2, 4, 3, 2, 4)


def errors_of(arch, **flags):
    r = resolve(get_arch(arch), {"--" + k.replace("_", "-"): v for k, v in flags.items()})
    return [p for p in r.problems if p.severity == "error"], [p for p in r.problems if p.severity == "warning"]


@pytest.mark.parametrize("arch,flags,flag,words", [
    ("zipformer", {"num_encoder_layers": "2,2"}, "--encoder-dims", "one value per stack"),
    ("zipformer", {"decode_chunk_len": "33"}, "--decode-chunk-len", "even"),
    ("zipformer", {"decode_chunk_len": "24"}, "--zipformer-downsampling-factors", "divisible by the largest"),
    ("zipformer", {"encoder_unmasked_dims": "256,256,400,256,256"}, "--encoder-unmasked-dims", "larger than"),
    ("zipformer", {"attention_dims": "192,192,100,192,192"}, "--nhead", "divisible"),
    ("zipformer", {"cnn_module_kernels": "31,31,30,31,31"}, "--cnn-module-kernels", "odd"),
    ("zipformer", {"encoder_dims": "384,384,512,384,384"}, "--encoder-dims", "equal dims"),
    ("zipformer", {"num_left_chunks": "0"}, "--num-left-chunks", "positive"),
    ("zipformer", {"encoder_dims": "384,x,384,384,384"}, "--encoder-dims", "comma-separated list"),
    ("conv-emformer", {"left_context_length": "30"}, "--left-context-length", "multiple of 4"),
    ("conv-emformer", {"right_context_length": "6"}, "--right-context-length", "multiple of 4"),
    ("conv-emformer", {"chunk_length": "24"}, "--chunk-length", "power of two"),
    ("conv-emformer", {"encoder_dim": "500", "nhead": "8"}, "--nhead", "divisible"),
    ("conv-emformer", {"num_encoder_layers": "-1"}, "--num-encoder-layers", "positive"),
    ("conv-emformer", {"chunk_length": "3.5"}, "--chunk-length", "whole number"),
    ("lstm", {"rnn_hidden_size": "256", "encoder_dim": "512"}, "--rnn-hidden-size", ">= --encoder-dim"),
    ("lstm", {"encoder_dim": "0"}, "--encoder-dim", "positive"),
])
def test_cross_field_rules_name_the_flag(arch, flags, flag, words):
    errors, _ = errors_of(arch, **flags)
    assert errors, f"expected an error for {flags}"
    assert any(flag in p.flags and flag in p.message and words in p.message for p in errors), \
        [p.message for p in errors]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_context_size_other_than_2_is_a_warning_not_an_error(arch):
    errors, warnings = errors_of(arch, context_size="1", memory_size="32") if arch == "conv-emformer" \
        else errors_of(arch, context_size="1")
    assert errors == []
    assert any("--context-size" in w.message and "hard-codes" in w.message for w in warnings)


def test_memory_size_zero_is_refused_with_the_reason():
    """icefall's memory-less Emformer builds torch.empty(0): pnnx leaves it unconverted (seen with the real code)."""
    errors, _ = errors_of("conv-emformer", memory_size="0")
    assert any("--memory-size" in e.message and "torch.empty" in e.message for e in errors)
    errors, _ = errors_of("conv-emformer", memory_size="32")
    assert not any("--memory-size" in e.message for e in errors)


def test_unknown_flag_for_the_architecture_is_an_error():
    errors, _ = errors_of("lstm", decode_chunk_len="32")
    assert any("--decode-chunk-len" in p.message for p in errors)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_metadata_values_read_back_to_the_hyperparameters(arch):
    spec = get_arch(arch)
    values = spec.defaults()
    meta = {e.key: e.value for e in spec.metadata(values)}
    back = spec.values_from_metadata(meta)
    for name, v in back.items():
        assert values[name] == v


def test_conv_emformer_key_4_is_left_context_after_subsampling():
    r = resolve(get_arch("conv-emformer"), {"--left-context-length": "64", "--memory-size": "32"})
    meta = build_metadata(r).as_dict()
    assert meta[4] == 16


def test_io_contracts_follow_the_hyperparameters():
    z = get_arch("zipformer")
    two = resolve(z, {k: "2,2" for k in ("--num-encoder-layers", "--feedforward-dims", "--nhead", "--encoder-dims",
                                         "--attention-dims", "--encoder-unmasked-dims",
                                         "--zipformer-downsampling-factors", "--cnn-module-kernels")})
    assert len(z.io_contract(two.values).inputs) == 15
    assert len(z.io_contract(z.defaults()).inputs) == 36
    e = get_arch("conv-emformer")
    assert len(e.io_contract(e.defaults()).inputs) == 49
    assert get_arch("lstm").io_contract({}).inputs == ("in0", "in1", "in2", "in3")
    assert z.segment_offset(z.defaults()) == (39, 32)
    assert e.segment_offset(e.defaults()) == (51, 32)


def test_get_arch_accepts_recipe_names_and_rejects_others():
    assert get_arch("pruned_transducer_stateless7_streaming").name == "zipformer"
    assert get_arch("lstm_transducer_stateless3").name == "lstm"
    with pytest.raises(KeyError, match="choose one of"):
        get_arch("zipformer2")
