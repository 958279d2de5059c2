"""doctor: every problem sherpa-ncnn users hit is named with the file, line and a fix."""
from pathlib import Path

import pytest

from core.model.architectures import get_arch, resolve
from core.validation.doctor import UnusableInput, diagnose
from core.model.metadata import apply_plan, build_metadata, plan_metadata
from core.ncnn.param import load_param

from conftest import fixture_flags
from tests.paths import SHARED_REAL


def add_meta(directory, arch, line=None):
    p = directory / "encoder_jit_trace-pnnx.ncnn.param"
    if line is None:
        flags = fixture_flags(arch)
        r = resolve(get_arch(arch), dict(zip(flags[0::2], flags[1::2])))
        apply_plan(plan_metadata(load_param(p).model, build_metadata(r), r.values), p)
    else:
        model = load_param(p).model
        model = model.with_line_inserted(2, line).with_header(model.layer_count + 1, model.blob_count)
        p.write_bytes(model.to_bytes())
    return p


def errors(report):
    return [f for f in report.findings if f.severity == "error"]


def test_conv_emformer_with_metadata_is_healthy(model_dir):
    d = model_dir("conv-emformer")
    add_meta(d, "conv-emformer")
    report = diagnose(d)
    assert report.healthy, [str(f) for f in errors(report)]
    assert report.arch == "conv-emformer" and report.metadata[4] == 8
    assert set(report.files) == {"encoder", "decoder", "joiner", "tokens"}


def test_missing_metadata_says_what_sherpa_ncnn_does_and_the_command_to_fix(model_dir):
    d = model_dir("conv-emformer")
    report = diagnose(d)
    msg = " ".join(f.message for f in errors(report))
    assert "no SherpaMetaData" in msg and "segfault" in msg
    assert "sherpa-ncnn-wizard meta" in msg and "--arch conv-emformer" in msg


def test_wrong_type_key(model_dir):
    d = model_dir("lstm")
    add_meta(d, "lstm", "SherpaMetaData sherpa_meta_data1 0 0 0=4 1=3 2=192 3=384")
    assert any("type key 0=4" in f.message and f.line == 3 for f in errors(diagnose(d)))


def test_zipformer_without_version_key_exits(model_dir):
    d = model_dir("zipformer")
    add_meta(d, "zipformer", "SherpaMetaData sherpa_meta_data1 0 0 0=2 1=32 2=4 3=7 -23316=5,2,2,2,2,2 "
             "-23317=5,128,128,128,128,128 -23318=5,64,64,64,64,64 -23319=5,1,2,4,8,2 -23320=5,31,31,31,31,31")
    found = errors(diagnose(d))
    assert any("key 15" in f.message and "exit(-1)" in f.message for f in found)


def test_zipformer_runtime_missing_layers_are_errors(model_dir):
    d = model_dir("zipformer")
    add_meta(d, "zipformer")
    msgs = [f.message for f in errors(diagnose(d))]
    assert any("CumulativeSum" in m and "torch.as_strided" in m for m in msgs)


def test_lstm_tensor_to_is_named(model_dir):
    d = model_dir("lstm")
    add_meta(d, "lstm")
    assert any("Tensor.to" in f.message for f in errors(diagnose(d)))


def test_input_mismatch_with_metadata(model_dir):
    d = model_dir("conv-emformer")
    add_meta(d, "conv-emformer", "SherpaMetaData sherpa_meta_data1 0 0 0=1 1=12 2=32 3=31 4=8 5=32 6=8 7=144")
    assert any("17 Input blobs" in f.message and "49 inputs" in f.message for f in errors(diagnose(d)))


def test_float_values_and_misspelt_type(model_dir):
    d = model_dir("lstm")
    add_meta(d, "lstm", "SherpaMetaData sherpa_meta_data1 0 0 0=3 1=3.0 2=192 3=384")
    assert any("1=3.0" in f.message and "float" in f.message for f in errors(diagnose(d)))
    d2 = model_dir("conv-emformer")
    add_meta(d2, "conv-emformer", "SherapMetaData sherpa_meta_data1 0 0 0=1")
    msgs = [f.message for f in errors(diagnose(d2))]
    assert any("'SherapMetaData'" in m for m in msgs) and any("no SherpaMetaData" in m for m in msgs)


def test_wrong_layer_count_is_reported_with_its_line(model_dir):
    d = model_dir("conv-emformer")
    p = d / "encoder_jit_trace-pnnx.ncnn.param"
    p.write_bytes(p.read_bytes().replace(b"361 458", b"362 458", 1))
    found = errors(diagnose(p))
    assert any(f.line == 2 and "header says 362 layers" in f.message for f in found)


def test_tokens_problems(model_dir):
    d = model_dir("conv-emformer")
    add_meta(d, "conv-emformer")
    tokens = d / "tokens.txt"
    lines = tokens.read_text().splitlines()
    lines[0], lines[1] = "<sos/eos> 0", "<blk> 1"
    lines[5] = "broken"
    tokens.write_text("\n".join(lines) + "\n")
    found = [f for f in errors(diagnose(d)) if f.file.endswith("tokens.txt")]
    assert any("id 0 is '<sos/eos>'" in f.message for f in found)
    assert any(f.line == 6 and "silently stops" in f.message for f in found)


def test_tokens_that_do_not_match_the_joiner(model_dir):
    d = model_dir("conv-emformer")
    add_meta(d, "conv-emformer")
    tokens = d / "tokens.txt"
    tokens.write_text("".join(tokens.read_text().splitlines(keepends=True)[:40]))
    assert any("40 tokens but the joiner outputs 50" in f.message for f in errors(diagnose(d)))


def test_git_lfs_pointer_instead_of_weights(model_dir):
    d = model_dir("conv-emformer")
    add_meta(d, "conv-emformer")
    (d / "encoder_jit_trace-pnnx.ncnn.bin").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:x\n")
    assert any("git-lfs pointer" in f.message for f in errors(diagnose(d)))


def test_metadata_in_the_decoder_is_an_error(model_dir):
    d = model_dir("conv-emformer")
    add_meta(d, "conv-emformer")
    p = d / "decoder_jit_trace-pnnx.ncnn.param"
    model = load_param(p).model
    model = model.with_line_inserted(2, "SherpaMetaData sherpa_meta_data1 0 0 0=1").with_header(7, 6)
    p.write_bytes(model.to_bytes())
    assert any("decoder" in f.file and "only for the encoder" in f.message for f in errors(diagnose(d)))


def test_unusable_inputs(tmp_path):
    with pytest.raises(UnusableInput, match="no such file"):
        diagnose(tmp_path / "nope.param")
    with pytest.raises(UnusableInput, match="no encoder"):
        diagnose(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UnusableInput, match="not a .param"):
        diagnose(tmp_path / "x.txt")


REAL_FIXTURES = SHARED_REAL


@pytest.mark.skipif(not REAL_FIXTURES.is_dir(), reason="the icefall-real fixtures are not here")
def test_doctor_reads_pnnx_own_graph_for_the_shape_inference_mix_up():
    from core.validation.doctor import diagnose
    bad = [f for f in diagnose(REAL_FIXTURES / "conv-emformer").findings if f.file.endswith("encoder.pnnx.param")]
    assert len(bad) == 1 and bad[0].severity == "error" and bad[0].line == 130
    assert "pnnx 20241223" in bad[0].message
    good = [f for f in diagnose(REAL_FIXTURES / "lstm").findings if f.file.endswith("encoder.pnnx.param")]
    assert len(good) == 1 and good[0].severity == "ok"


def _small_graph(d: Path, slice_line: str) -> Path:
    """A two-layer graph with pnnx's own graph beside it (the input shape doctor --run feeds)."""
    d.mkdir()
    p = d / "encoder_jit_trace-pnnx.ncnn.param"
    p.write_text(f"7767517\n3 4\nInput in0 0 1 in0\n{slice_line}\nBinaryOp add_0 2 1 a b out0 0=0\n")
    (d / "encoder_jit_trace-pnnx.ncnn.bin").write_bytes(b"")
    (d / "encoder.pnnx.param").write_text("7767517\n1 1\npnnx.Input pnnx_input_0 0 1 0 #0=(4,3)f32\n")
    return p


def test_doctor_run_names_the_first_layer_that_crashes_ncnn(tmp_path, cli):
    """A Slice without its slices array crashes ncnn (SIGSEGV); doctor --run survives it and names the line."""
    bad = _small_graph(tmp_path / "bad", "Slice unbind_0 1 2 in0 a b")
    report = diagnose(bad, run=True)
    crash = [f for f in errors(report) if "first that crashes" in f.message]
    assert len(crash) == 1 and crash[0].line == 4 and "layer 'unbind_0' (Slice)" in crash[0].message
    assert "killed by SIGSEGV" in crash[0].message
    good = _small_graph(tmp_path / "good", "Slice unbind_0 1 2 in0 a b -23300=2,-233,-233 1=0")
    ran = diagnose(good, run=True)
    assert [f.message for f in ran.findings if "ncnn ran all" in f.message] == [
        "ncnn ran all 3 layers in a child process (python ncnn, one chunk of the inputs sherpa-ncnn feeds)"]
    code, out, _ = cli("doctor", bad, "--run")
    assert code == 1 and "is the first that crashes" in out


def test_doctor_run_without_known_input_shapes_says_it_did_not_run(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    p = d / "encoder_jit_trace-pnnx.ncnn.param"
    p.write_text("7767517\n2 2\nInput in0 0 1 in0\nReLU relu_0 1 1 in0 out0\n")
    (d / "encoder_jit_trace-pnnx.ncnn.bin").write_bytes(b"")
    report = diagnose(p, run=True)
    skipped = [f for f in report.findings if f.message.startswith("not run:")]
    assert len(skipped) == 1 and skipped[0].severity == "warning" and "SherpaMetaData" in skipped[0].message
