"""core/ncnn/requirements.py: every layer checked against what its ncnn implementation needs.

Each bad line is one python-ncnn would crash on or compute nothing with; each good line is one the real
fixtures use. The rewrite refuses such a graph by name and ``doctor`` reports it with its line.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.validation.doctor import diagnose
from core.ncnn.requirements import check_layers
from core.ncnn.param import parse_param
from core.rewrite.driver import plan_rewrites
from tests.paths import KIT, SHARED_REAL

REAL = SHARED_REAL


def _model(*layers: str):
    body = "".join(x + "\n" for x in layers)
    blobs = parse_param(f"7767517\n{len(layers)} 1\n{body}").model.counted_blobs()
    model = parse_param(f"7767517\n{len(layers)} {blobs}\n{body}").model
    assert model is not None and not model.errors, model.issues
    return model


def _problems(*layers: str) -> list[tuple[int, str, str]]:
    return [(p.line, p.name, p.type) for p in check_layers(_model(*layers))]


BAD = {
    "slice without slices": ("Slice unbind_0 1 1 in0 a", "neither a slices array"),
    "slice with too few slices": ("Slice s 1 3 in0 a b c -23300=2,-233,-233 1=0", "2 entries for 3 output(s)"),
    "reshape without shape": ("Reshape r 1 1 in0 a", "has no shape"),
    "reshape with two -1": ("Reshape r 1 1 in0 a 0=-1 1=-1", "more than one -1"),
    "crop without range": ("Crop c 1 1 in0 a", "has no range"),
    "crop starts without ends": ("Crop c 1 1 in0 a -23309=1,0 -23311=1,0", "starts (-23309=) without ends"),
    "crop starts/ends lengths": ("Crop c 1 1 in0 a -23309=2,0,0 -23310=1,4", "2 start(s) but 1 end(s)"),
    "memorydata without size": ("MemoryData m 0 1 a", "has no size"),
    "split with no outputs": ("Split sp 1 0 in0", "gives 1 or more output(s)"),
    "binaryop missing its second input": ("BinaryOp add 1 1 in0 a 0=0", "two inputs"),
    "concat with two outputs": ("Concat cat 1 2 in0 a b 0=0", "gives 1 output(s)"),
    "innerproduct without weights": ("InnerProduct fc 1 1 in0 a 0=4 1=1", "weight_data_size (2=) is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_unrunnable_layer_is_named_with_its_line(case):
    line, message = BAD[case]
    problems = check_layers(_model("Input in0 0 1 in0", line))
    assert [(p.line, p.name) for p in problems] == [(4, line.split()[1])], problems
    assert message in problems[0].message
    assert str(problems[0]).startswith(f"line 4: layer {line.split()[1]!r} ({line.split()[0]}): ")


GOOD = [
    "Slice s 1 2 in0 a b -23300=2,-233,-233 1=0",  # pnnx's own unbind of the attention caches
    "Slice s 1 1 in0 a -23300=1,-233 1=0",  # a one-output Slice with its slices array
    "Slice s 1 3 in0 a b c -23302=2,4,8 1=1",  # indices instead of slices (newer ncnn)
    "Reshape r 1 1 in0 a 0=64 1=-1",
    "Crop c 1 1 in0 a -23309=1,0 -23310=1,4 -23311=1,0",
    "Crop c 1 1 in0 a 0=2 3=4",  # offsets and sizes (older form)
    "MemoryData m 0 1 a 0=16",
    "BinaryOp add 1 1 in0 a 0=0 1=1 2=1.0",  # with a scalar: one input
    "Split sp 1 3 in0 a b c",
    "InnerProduct fc 1 1 in0 a 0=4 1=1 2=32",
]


@pytest.mark.parametrize("line", GOOD)
def test_runnable_layers_pass(line):
    assert check_layers(_model("Input in0 0 1 in0", line)) == []


def test_a_blob_no_layer_produces_is_named():
    assert _problems("Input in0 0 1 in0", "ReLU relu 1 1 nowhere out0") == [(4, "relu", "ReLU")]


@pytest.mark.skipif(not REAL.is_dir(), reason="the icefall-real fixtures are not there")
@pytest.mark.parametrize("arch", ["lstm", "conv-emformer", "zipformer"])
def test_real_decoders_and_joiners_and_clean_encoders_pass(arch):
    from core.ncnn.param import load_param
    for net in ("decoder", "joiner") + (("encoder",) if arch != "zipformer" else ()):
        model = load_param(REAL / arch / f"{net}_jit_trace-pnnx.ncnn.param").model
        assert check_layers(model) == [], (arch, net)


ONE_LAYER = KIT / "zipformer-1layer-stacks"
needs_kit = pytest.mark.skipif(not ONE_LAYER.is_dir(), reason=f"the icefall kit is not at {KIT}")


@needs_kit
def test_the_kit_one_layer_encoder_as_pnnx_wrote_it_has_its_12_parameterless_slices_found():
    from core.ncnn.param import load_param
    problems = check_layers(load_param(ONE_LAYER / "encoder_jit_trace-pnnx.ncnn.param").model)
    assert [(p.line, p.name) for p in problems][:2] == [(45, "unbind_0"), (47, "unbind_1")]
    assert len(problems) == 12 and {p.type for p in problems} == {"Slice"}


def test_the_rewrite_refuses_a_graph_whose_layers_ncnn_cannot_run():
    model = _model("Input in0 0 1 in0", "Reshape r 1 1 in0 out0")
    plan = plan_rewrites(model)
    assert plan.action == "refused"
    assert "line 4: layer 'r' (Reshape): has no shape" in plan.errors[0]


@needs_kit
def test_doctor_never_calls_the_one_layer_encoder_healthy(tmp_path):
    """A model directory with metadata that checks out, but an encoder ncnn crashes on: doctor says so by line."""
    d = tmp_path / "model"
    d.mkdir()
    for f in ONE_LAYER.glob("*_jit_trace-pnnx.ncnn.*"):
        shutil.copyfile(f, d / f.name)
    shutil.copyfile(ONE_LAYER / "tokens.txt", d / "tokens.txt")
    report = diagnose(d)
    assert not report.healthy
    slices = [f for f in report.findings if f.severity == "error" and "(Slice)" in f.message]
    assert len(slices) == 12 and slices[0].line == 45 and "'unbind_0'" in slices[0].message


def test_the_rewrite_step_checks_the_decoder_and_joiner_too(tmp_path):
    """check_runnable (run by the rewrite step on the final encoder, decoder and joiner) refuses by line and name."""
    from core.pipeline.rewrite_step import check_runnable
    from core.pipeline.runner import StepError
    good = tmp_path / "joiner_jit_trace-pnnx.ncnn.param"
    good.write_text("7767517\n2 2\nInput in0 0 1 in0\nReLU relu 1 1 in0 out0\n")
    bad = tmp_path / "decoder_jit_trace-pnnx.ncnn.param"
    bad.write_text("7767517\n3 3\nInput in0 0 1 in0\nMemoryData m 0 1 c\nBinaryOp add 2 1 in0 c out0 0=0\n")
    said = []
    check_runnable([good], log=said.append)
    assert said == ["joiner_jit_trace-pnnx.ncnn.param: every layer has what ncnn needs to run it (2 layers)"]
    with pytest.raises(StepError) as info:
        check_runnable([good, bad], log=said.append)
    assert f"{bad}: 1 layer(s) ncnn cannot run as written: line 4: layer 'm' (MemoryData): has no size" in str(info.value)
