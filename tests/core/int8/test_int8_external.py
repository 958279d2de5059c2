"""The external int8 backend: choosing it, the steps it plans, and a whole demo run through the tools.

The tools are the stand-ins of tests/int8_tool_standins.py (same arguments, output and exit-code lies as
the real binaries, which no package index ships).
"""
import json
import os

import pytest

from core.pipeline.config import ConfigError, config_from_dict
from core.pipeline.demo import demo_config
from core.pipeline.int8_external import choose_backend
from core.pipeline.plan import build_plan
from core.pipeline.layout import PlanError
from tests.int8_tool_standins import install
from tui.cli.main import main


@pytest.fixture
def tools_on_path(tmp_path, monkeypatch):
    bindir = install(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    return bindir


def _int8_config(arch, out, backend):
    config = demo_config(arch)
    config.output.dir = str(out)
    config.output.int8 = True
    config.calibration.backend = backend
    return config


def test_backend_is_builtin_by_default_and_says_which_tools_it_did_not_use(tools_on_path, tmp_path):
    config = _int8_config("lstm", tmp_path / "o", "builtin")
    run = build_plan(config)
    ids = [s.id for s in run.plan.steps]
    assert "quantize" in ids and "quantize-encoder" not in ids
    assert next(s for s in run.plan.steps if s.id == "calibrate").argv is None  # in process
    assert any("found but not used" in w and str(tools_on_path) in w for w in run.warnings)
    assert run.plan.manifest["tools"]["int8"]["calibrate"] == "builtin"


def test_external_backend_plans_the_tools_with_their_own_argument_order(tools_on_path, tmp_path):
    out = tmp_path / "o"
    run = build_plan(_int8_config("lstm", out, "external"))
    steps = {s.id: s for s in run.plan.steps}
    cal = steps["calibrate"]
    assert cal.argv[0] == str(tools_on_path / "generate-int8-scale-table") and len(cal.argv) == 10
    assert cal.argv[1] == str(out / "encoder_jit_trace-pnnx.ncnn.param")  # the table tool wants the metadata
    assert cal.argv[2].endswith("work/fp32/set/encoder_jit_trace-pnnx.ncnn.bin")  # pnnx fp32 + the .bin rewrites
    assert cal.argv[-1] == str(out / "work" / "calibration-wavs.txt")
    enc = steps["quantize-encoder"]
    assert enc.argv[0] == str(tools_on_path / "ncnn2int8")
    assert enc.argv[1].endswith("work/int8/encoder.nometa.param")  # ncnn2int8 reads it without
    assert enc.argv[5] == str(out / "work" / "int8" / "encoder-scale-table.ncnn2int8.txt")  # + weight-only lines
    assert str(out / "encoder-scale-table.txt") in map(str, enc.inputs)
    assert steps["quantize-joiner"].argv[3] == str(out / "joiner_jit_trace-pnnx.ncnn.int8.param")
    ids = list(steps)
    assert ids.index("quantize-joiner") < ids.index("int8-metadata") < ids.index("validate-int8")
    # the table tool records nothing for the int8 check: its fp32 half is recorded on the test wavs, in the
    # background once the fp32 set exists
    assert ids.index("fp32-set") + 1 == ids.index("int8-reference") < ids.index("calibrate")
    assert steps["int8-reference"].background and steps["int8-reference"].needs == ()
    assert steps["validate-int8"].needs == ("int8-reference",)
    assert steps["int8-reference"].outputs[0] in steps["validate-int8"].inputs
    assert steps["int8-reference"].outputs[0] not in cal.outputs
    assert run.plan.manifest["tools"]["int8"]["quantize"] == str(tools_on_path / "ncnn2int8")
    assert "generate-int8-scale-table" in run.script and "ncnn2int8" in run.script


def test_external_backend_without_tools_is_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(PlanError) as err:
        build_plan(_int8_config("lstm", tmp_path / "o", "external"))
    assert any(p.startswith("calibration.backend:") for p in err.value.problems)
    config = _int8_config("lstm", tmp_path / "o", "auto")  # auto falls back to the built-in code
    assert "quantize" in [s.id for s in build_plan(config).plan.steps]


def test_a_configured_tool_that_is_missing_is_named(tmp_path, tools_on_path):
    config = _int8_config("lstm", tmp_path / "o", "external")
    config.tools.ncnn2int8 = str(tmp_path / "nowhere" / "ncnn2int8")
    backend = choose_backend(config)
    assert backend.problems and backend.problems[0].startswith("tools.ncnn2int8:")
    assert str(tmp_path / "nowhere") in backend.problems[0]


def test_only_one_tool_found_uses_the_builtin_for_the_other(tmp_path, monkeypatch, tools_on_path):
    (tools_on_path / "ncnn2int8").unlink()
    run = build_plan(_int8_config("lstm", tmp_path / "o", "external"))
    steps = {s.id: s for s in run.plan.steps}
    assert steps["calibrate"].argv is not None and "quantize" in steps and "quantize-encoder" not in steps
    assert any("ncnn2int8 not found" in w for w in run.warnings)


def test_backend_value_is_checked_in_the_config():
    with pytest.raises(ConfigError, match="calibration.backend = 'fast' is not one of builtin, external, auto"):
        config_from_dict({"arch": "lstm", "calibration": {"backend": "fast"}})


@pytest.mark.slow
def test_demo_int8_through_the_external_tools(tmp_path, capsys, tools_on_path):
    out = tmp_path / "out"
    assert main(["run", "--demo", "lstm", "--out", str(out), "--int8", "--int8-backend", "external"]) == 0
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    table_log = next(v for k, v in logs.items() if k.endswith("-calibrate.log"))
    assert "generate-int8-scale-table" in table_log.splitlines()[0] and "create success" in table_log
    enc_log = next(v for k, v in logs.items() if k.endswith("-quantize-encoder.log"))
    assert "quantize_innerproduct" in enc_log and "create_custom_layer" not in enc_log  # fed without metadata
    int8_param = (out / "encoder_jit_trace-pnnx.ncnn.int8.param").read_text().splitlines()
    fp16_param = (out / "encoder_jit_trace-pnnx.ncnn.param").read_text().splitlines()
    assert int8_param[2] == fp16_param[2] and int8_param[2].startswith("SherpaMetaData ")  # the same line
    validation = json.loads((out / "validation.json").read_text())
    assert validation["ok"] and validation["decode_int8"]["ok"]
    assert all(s["mean_cosine"] >= 0.99 for s in validation["int8_similarity"])


@pytest.mark.slow
@pytest.mark.parametrize("breakage, message", [
    ("no-success", "did not print its success line"),
    ("no-scale", "need to be quantized, but no scale param"),
])
def test_a_tool_that_exits_0_without_doing_its_job_fails_the_step(tmp_path, capsys, tools_on_path, monkeypatch,
                                                                   breakage, message):
    monkeypatch.setenv("STANDIN_BREAK", breakage)
    out = tmp_path / "out"
    assert main(["run", "--demo", "lstm", "--out", str(out), "--int8", "--int8-backend", "external"]) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    failed = [s for s in manifest["steps"] if s.get("status") == "failed"]
    assert failed and message in failed[0]["error"]
    assert not (out / "encoder_jit_trace-pnnx.ncnn.int8.param").exists()


@pytest.mark.slow
def test_current_ncnn2int8_quantizes_the_lstms_with_the_weight_lines_the_wizard_adds(tmp_path, capsys, tools_on_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("STANDIN_BREAK", "needs-weight-lines")  # ncnn since 3724d10: LSTMs need _param_0/1 lines
    out = tmp_path / "out"
    assert main(["run", "--demo", "lstm", "--out", str(out), "--int8", "--int8-backend", "external"]) == 0
    assert "lstm_" not in (out / "encoder-scale-table.txt").read_text()  # sherpa-ncnn's tool does not write them
    lstms = [l for l in (out / "encoder_jit_trace-pnnx.ncnn.int8.param").read_text().splitlines()
             if l.startswith("LSTM")]
    assert lstms and all(" 8=2" in l for l in lstms)
    table = (out / "work" / "int8" / "encoder-scale-table.ncnn2int8.txt").read_text()
    assert all(f"{l.split()[1]}_param_{k} " in table for l in lstms for k in (0, 1))  # every LSTM's weight lines
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    meta_log = next(v for k, v in logs.items() if k.endswith("-int8-metadata.log"))
    assert "gemm_0's weight by" in meta_log and "from its first row only" in meta_log  # the clipping, in figures


@pytest.mark.slow
def test_ncnn2int8_of_c4193aad_dies_with_sigfpe_and_the_failure_names_cause_and_fixes(tmp_path, capsys,
                                                                                      tools_on_path, monkeypatch):
    monkeypatch.setenv("STANDIN_BREAK", "sigfpe")
    out = tmp_path / "out"
    assert main(["run", "--demo", "lstm", "--out", str(out), "--int8", "--int8-backend", "external"]) == 1
    failed = [s for s in json.loads((out / "manifest.json").read_text())["steps"] if s.get("status") == "failed"]
    assert failed[0]["id"] == "quantize-encoder" and "SIGFPE" in failed[0]["error"]
    printed = capsys.readouterr().out
    assert "430b3124a" in printed and "cc1673491" in printed
