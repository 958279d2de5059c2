"""Graph rewrites (core/rewrite/driver.py) on the untouched pnnx output of icefall's real exports.

The fast tests plan and apply rewrites on copies of the fixtures' params. The slow ones run the whole
``run --from-ncnn`` (import -> rewrite -> metadata -> validate) and check that sherpa-ncnn 2.1.15 loads and
decodes the result in a child process and that python-ncnn's outputs match the fixtures' reference npz.

Related checks that live elsewhere: tests/core/pnnx/test_pnnx_real.py converts a traced LSTM-with-projection +
Linear-on-3-D model with the pinned pnnx (test that it does not crash), and
tests/core/pipeline/test_pipeline.py::test_known_bad_pnnx_is_refused checks that preflight refuses pnnx 20261020.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from core.ncnn.param import load_param, parse_param
from core.rewrite.driver import RewriteError, apply_rewrites, plan_file, plan_rewrites
from tests.paths import SHARED_REAL

REAL = SHARED_REAL
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"the icefall-real fixtures are not at {REAL} "
                                                          "(../shared/fixtures/icefall-real from the repo)")
ENC = "encoder_jit_trace-pnnx.ncnn.param"


def flags(arch: str) -> list[str]:
    return (REAL / arch / "export-flags.txt").read_text().split()


def copy_fixture(arch: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in (REAL / arch).iterdir():
        shutil.copyfile(f, dst / f.name)
    return dst


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- fast: plans ------------------------------------------------------------------------

@needs_real
def test_lstm_plan_removes_the_lengths_cast_and_frees_the_time_length(tmp_path):
    d = copy_fixture("lstm", tmp_path / "lstm")
    before = sha(d / ENC)
    plan = plan_file(d / ENC, arch="lstm")
    assert plan.action == "rewrite" and plan.can_apply, plan.errors
    assert [(c.rule, c.layer, c.type) for c in plan.changes] == [
        ("lengths-cast", "Tensor.to_8", "Tensor.to"), ("static-time-reshape", "reshape_22", "Reshape")]
    assert (plan.layers_before, plan.layers_after, plan.blobs_before, plan.blobs_after) == (91, 90, 121, 120)
    assert "-Tensor.to                Tensor.to_8              1 1 41 out1" in plan.diff
    assert "+UnaryOp                  floor_15                 1 1 40 out1 0=2" in plan.diff
    assert "+Reshape                  reshape_22               1 1 23 24 0=2304 1=-1" in plan.diff
    assert "torch.long" in plan.changes[0].what  # read from pnnx's own graph (encoder.pnnx.param)
    assert sha(d / ENC) == before  # a plan writes nothing
    new = parse_param(plan.new_param).model
    assert new.ok and "Tensor.to" not in new.layer_types() and new.counted_blobs() == new.blob_count
    assert set(new.output_names) == {"out0", "out1", "out2", "out3"}


@needs_real
def test_lstm_apply_is_atomic_with_backup_and_idempotent(tmp_path):
    d = copy_fixture("lstm", tmp_path / "lstm")
    original = (d / ENC).read_bytes()
    bin_before = sha(d / "encoder_jit_trace-pnnx.ncnn.bin")
    plan = plan_file(d / ENC, arch="lstm")
    result = apply_rewrites(plan, d / ENC, d / "encoder_jit_trace-pnnx.ncnn.bin")
    assert result.applied and Path(result.backup).read_bytes() == original
    assert (d / ENC).read_bytes() == plan.new_param
    assert sha(d / "encoder_jit_trace-pnnx.ncnn.bin") == bin_before  # no weights move
    again = plan_file(d / ENC, arch="lstm")
    assert again.action == "unchanged" and again.summary().startswith("nothing to rewrite")
    assert not apply_rewrites(again, d / ENC).applied
    # applying the old plan to the changed file is refused (the file changed since the preview)
    with pytest.raises(RewriteError, match="changed since the plan"):
        apply_rewrites(plan, d / ENC, d / "encoder_jit_trace-pnnx.ncnn.bin")


@needs_real
def test_lstm_static_time_rewrite_needs_the_arch(tmp_path):
    plan = plan_file(REAL / "lstm" / ENC)  # arch unknown: only the runtime-missing layer is handled
    assert [c.rule for c in plan.changes] == ["lengths-cast"]


@needs_real
def test_conv_emformer_has_nothing_to_rewrite():
    plan = plan_file(REAL / "conv-emformer" / ENC, arch="conv-emformer")
    assert plan.action == "unchanged" and plan.new_param is None and not plan.errors


CUMSUM_LINE = "CumulativeSum            cumsum_519               1 1 97 98 0=0"


def odd_zipformer(dst: Path) -> Path:
    """The zipformer fixture with one CumulativeSum turned into a variant no rewrite recognises (an extra key)."""
    d = copy_fixture("zipformer", dst)
    text = (d / ENC).read_text()
    assert CUMSUM_LINE in text
    (d / ENC).write_text(text.replace(CUMSUM_LINE, CUMSUM_LINE + " 1=1"))
    return d


@needs_real
def test_unknown_pattern_is_refused_with_name_and_type_and_files_untouched(tmp_path):
    d = odd_zipformer(tmp_path / "zip")
    before = {f.name: sha(f) for f in d.iterdir()}
    plan = plan_file(d / ENC, arch="zipformer")
    assert plan.action == "refused" and not plan.can_apply
    assert "layer 'cumsum_519' (CumulativeSum) at line 82: not a pattern any rewrite recognises" in plan.errors[0]
    assert "only an axis" in plan.errors[0]
    text = "7767517\n2 2\nInput in0 0 1 in0\nSwish swish 1 1 in0 out0\n"
    unknown = plan_rewrites(parse_param(text).model)
    assert unknown.action == "refused" and "layer 'swish' (Swish)" in unknown.errors[0]
    assert "no rewrite recognises this layer type" in unknown.errors[0]
    with pytest.raises(RewriteError, match="cumsum_519"):
        apply_rewrites(plan, d / ENC, d / "encoder_jit_trace-pnnx.ncnn.bin")
    assert {f.name: sha(f) for f in d.iterdir()} == before and not list(d.glob("*.orig"))


@needs_real
def test_a_cast_off_the_lengths_path_is_refused(tmp_path):
    """A Tensor.to whose input is not whole-number scalar arithmetic on an Input is not guessed at."""
    text = (REAL / "lstm" / ENC).read_text()
    # the cast now reads the division before the floor (not a whole number); the floor reads the step before
    text = text.replace("UnaryOp                  floor_15                 1 1 40 41 0=2",
                        "UnaryOp                  floor_15                 1 1 39 41 0=2")
    text = text.replace("Tensor.to                Tensor.to_8              1 1 41 out1",
                        "Tensor.to                Tensor.to_8              1 1 40 out1")
    model = parse_param(text, "enc.param").model
    assert model is not None and model.ok, model.issues if model else None
    plan = plan_rewrites(model, arch="lstm")
    assert plan.action == "refused"
    assert plan.errors[0].startswith("layer 'Tensor.to_8' (Tensor.to) at line 39: not a pattern any rewrite "
                                     "recognises: its input comes from layer 'div_14' (BinaryOp)")


def test_a_slice_without_parameters_is_refused():
    text = ("7767517\n3 4\nInput in0 0 1 in0\nSlice unbind_0 1 2 in0 a b\nBinaryOp add 2 1 a b out0 0=0\n")
    plan = plan_rewrites(parse_param(text).model)
    assert plan.action == "refused" and plan.errors[0].startswith("layer 'unbind_0' (Slice) at line 4: a Slice "
                                                                  "without parameters")


def test_demo_like_graph_without_problem_layers_is_a_no_op():
    text = "7767517\n2 2\nInput in0 0 1 in0\nReLU relu 1 1 in0 out0\n"
    plan = plan_rewrites(parse_param(text).model, arch="lstm")
    assert plan.action == "unchanged" and plan.summary() == \
        "nothing to rewrite: every layer type is one sherpa-ncnn's runtime has"


# -- slow: the whole --from-ncnn run, sherpa-ncnn in a child process ------------------------

def _from_ncnn(cli, arch: str, out: Path):
    code, stdout, stderr = cli("run", "--from-ncnn", REAL / arch, "--arch", arch, *flags(arch), "--out", out)
    report = json.loads((out / "validation.json").read_text()) if (out / "validation.json").exists() else None
    return code, stdout, stderr, report


def _print_diffs(arch: str, report: dict) -> None:
    for r in report["numeric"]:
        print(f"{arch}: {r['net']} {r.get('output', '')} {r.get('note', '')}: max abs diff {r.get('max_abs')}")


@pytest.mark.slow
@needs_real
@pytest.mark.parametrize("arch", ["lstm"])
def test_from_ncnn_gives_a_model_sherpa_ncnn_loads_and_that_matches_the_reference(cli, tmp_path, arch):
    before = {f.name: sha(f) for f in (REAL / arch).iterdir()}
    out = tmp_path / "out"
    code, stdout, stderr, report = _from_ncnn(cli, arch, out)
    assert code == 0, stdout + stderr
    _print_diffs(arch, report)
    numeric = report["numeric"]
    assert numeric and all(r["ok"] for r in numeric)
    outputs = {(r["net"], r["output"], r["note"]) for r in numeric}
    n_out = len(load_param(REAL / arch / ENC).model.output_names)
    assert len([o for o in outputs if o[0] == "encoder" and "chunk 1" in o[2]]) == n_out  # both chunks, all outputs
    assert ("decoder", "out0", "") in outputs and ("joiner", "out0", "") in outputs
    if arch == "lstm":  # sherpa-ncnn's own chunking (9 frames, advance 4) reproduces the whole-chunk trace
        assert any("streamed 9/4" in r["note"] and r["ok"] for r in numeric)
    decode = report["decode"]
    assert decode["ok"] and decode["returncode"] == 0 and "LOADED" in decode["log_tail"]
    assert decode["results"][0]["tokens"], "random weights still emit tokens"
    manifest = json.loads((out / "manifest.json").read_text())
    rewrite = manifest["summary"]["rewrite"]
    assert rewrite["action"] == ("rewrite" if arch == "lstm" else "unchanged")
    meta = load_param(out / ENC).model.layers[0]
    assert meta.type == "SherpaMetaData"
    if arch == "lstm":
        assert [p.text for p in meta.params] == ["0=3", "1=3", "2=192", "3=384"]
    # the input directory was only read
    assert {f.name: sha(f) for f in (REAL / arch).iterdir()} == before


@pytest.mark.slow
@needs_real
def test_conv_emformer_from_the_mis_converted_fixture_is_refused_with_the_reason(cli, tmp_path):
    """The fixture's encoder was mis-converted by pnnx's shape inference (layer 2 lost a slice; its own
    encoder.pnnx.param shows element-wise operators changing shape). It loads and decodes in sherpa-ncnn,
    with wrong numbers, so the wizard refuses it, names the first bad operator and says how to convert
    again (tests/core/pnnx/test_pnnx_convert.py shows the conversion that works around the bug)."""
    before = {f.name: sha(f) for f in (REAL / "conv-emformer").iterdir()}
    out = tmp_path / "out"
    code, stdout, stderr, report = _from_ncnn(cli, "conv-emformer", out)
    assert code == 2 and report is None  # refused before anything runs
    err = " ".join(stderr.split())
    assert "pnnx's own graph is inconsistent" in err and "line 130: pnnx.Expression pnnx_expr_405" in err
    assert "--traced-dir" in err and "pnnx 20241223" in err  # how to convert again
    assert not out.exists()
    assert before == {f.name: sha(f) for f in (REAL / "conv-emformer").iterdir()}


@needs_real
def test_conv_emformer_with_its_traced_encoder_is_converted_again(cli, tmp_path):
    """Given the traced encoder, the plan converts it again (pnnx, checked, fallback) instead of importing it."""
    from core.pipeline.from_ncnn import build_from_ncnn_plan
    src = tmp_path / "src"
    shutil.copytree(REAL / "conv-emformer", src)
    (src / "encoder_jit_trace-pnnx.pt").write_bytes(b"a traced encoder")  # planning only looks for it
    flags_given = dict(zip(flags("conv-emformer")[::2], flags("conv-emformer")[1::2]))
    run = build_from_ncnn_plan(src, "conv-emformer", flags_given, out_dir=tmp_path / "out")
    steps = {s.id: s for s in run.plan.steps}
    assert list(steps)[:3] == ["import", "pnnx-encoder", "rewrite"]
    argv = steps["pnnx-encoder"].argv
    assert argv[1:3] == ["-m", "core.pnnx.convert"] and str(src / "encoder_jit_trace-pnnx.pt") in argv
    assert "--fallback" in argv
    imported = {p.name for p in steps["import"].outputs}
    assert "encoder_jit_trace-pnnx.ncnn.param" not in imported  # the mis-converted encoder is not used
    assert any("converted again" in w for w in run.warnings)


@pytest.mark.slow
@needs_real
def test_lstm_decoding_is_deterministic_after_the_rewrite(cli, tmp_path):
    """Before the static-time rewrite each 9-frame chunk became 23 frames, 22 read past the buffer: the
    decoded tokens changed from run to run."""
    from core.validation.decoding import decode
    out = tmp_path / "out"
    code, stdout, stderr, _ = _from_ncnn(cli, "lstm", out)
    assert code == 0, stdout + stderr
    runs = [decode(out, [], {}).results[0]["tokens"] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.slow
@needs_real
def test_from_ncnn_zipformer(cli, tmp_path):
    """The pnnx wheel's Zipformer (CumulativeSum, as_strided, Tile, mis-lowered unbind/stack/unsqueeze, integer
    constants) rewritten to plain layers: python-ncnn matches the traced torch encoder on both chunks (states
    carried) for every output, and sherpa-ncnn 2.1.15 loads and decodes it in a child process."""
    out = tmp_path / "out"
    code, stdout, stderr, report = _from_ncnn(cli, "zipformer", out)
    assert code == 0, stdout + stderr
    assert report and report["decode"]["ok"]
    enc = [r for r in report["numeric"] if r["net"] == "encoder"]
    for chunk in (0, 1):
        rows = {r["output"]: r for r in enc if r["note"] == f"chunk {chunk}"}
        assert sorted(rows, key=lambda o: int(o[3:])) == [f"out{j}" for j in range(36)]
        print(f"chunk {chunk}: " + ", ".join(f"{o} {r['max_abs']:.2e}" for o, r in rows.items()))
    assert all(r["ok"] for r in report["numeric"]), [r for r in report["numeric"] if not r["ok"]]
    plan = json.loads((out / "work" / "rewrite-plan.json").read_text())
    assert plan["action"] == "rewrite"
    types = {layer.type for layer in load_param(out / ENC).model.layers}
    assert not types & {"CumulativeSum", "torch.as_strided", "Tile"}


@pytest.mark.slow
@needs_real
def test_from_ncnn_zipformer_stops_at_the_rewrite_naming_the_layer(cli, tmp_path):
    out = tmp_path / "out"
    d = odd_zipformer(tmp_path / "zip")
    code, stdout, stderr = cli("run", "--from-ncnn", d, "--arch", "zipformer", *flags("zipformer"), "--out", out)
    report = json.loads((out / "validation.json").read_text()) if (out / "validation.json").exists() else None
    assert code == 1 and report is None
    assert "cumsum_519" in stdout + stderr and "CumulativeSum" in stdout + stderr
    assert json.loads((out / "work" / "rewrite-plan.json").read_text())["action"] == "refused"
    assert not (out / ENC).exists()  # the metadata step never ran


def test_from_ncnn_refuses_a_bad_input_dir(cli, tmp_path):
    (tmp_path / "in").mkdir()
    code, stdout, stderr = cli("run", "--from-ncnn", tmp_path / "in", "--arch", "lstm", "--out", tmp_path / "o")
    assert code == 2 and "encoder_jit_trace-pnnx.ncnn.param not found" in stderr
    code, stdout, stderr = cli("run", "--from-ncnn", tmp_path / "in", "--out", tmp_path / "o")
    assert code == 2 and "needs --arch" in stderr


@needs_real
def test_rewrite_command_previews_applies_and_refuses(cli, tmp_path):
    d = copy_fixture("lstm", tmp_path / "lstm")
    before = (d / ENC).read_bytes()
    code, out, err = cli("rewrite", d / ENC, "--arch", "lstm")
    assert code == 0 and "lengths-cast" in out and "add --apply" in out and (d / ENC).read_bytes() == before
    code, out, err = cli("rewrite", d / ENC, "--arch", "lstm", "--apply")
    assert code == 0 and (d / (ENC + ".orig")).read_bytes() == before and b"Tensor.to" not in (d / ENC).read_bytes()
    code, out, err = cli("rewrite", d / ENC, "--arch", "lstm", "--apply")
    assert code == 0 and "nothing to rewrite" in out
    z = odd_zipformer(tmp_path / "zip")
    zbefore = (z / ENC).read_bytes()
    code, out, err = cli("rewrite", z / ENC, "--arch", "zipformer", "--apply")
    assert code == 1 and "'cumsum_519' (CumulativeSum)" in err and (z / ENC).read_bytes() == zbefore


def test_rewrite_command_on_a_missing_file_is_bad_input(cli, tmp_path):
    code, out, err = cli("rewrite", tmp_path / "nope.param")
    assert code == 2 and "file not found" in err
