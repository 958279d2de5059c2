"""core.model.graph_hparams on real icefall exports: every metadata value read from the graph equals the export flags.

The kit (../shared/fixtures/icefall-kit, six configurations) and icefall-real (three) hold icefall's own
traced encoders, pnnx's graphs and ncnn files; export-flags.txt says what they were exported with (a flag it
lacks is icefall's default, e.g. zipformer-5stack's --num-left-chunks 4). All fast: nothing runs torch.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from core.model.architectures import get_arch, resolve
from core.model.graph_hparams import GRAPH, graph_mismatches, read_graph, reconcile
from core.model.metadata import build_metadata
from core.pipeline.layout import Layout
from core.pipeline.runner import StepContext, StepError
from core.pipeline.steps import make_finalize_encoder
from tests.paths import KIT, SHARED_FIXTURES_DIR

SHARED = SHARED_FIXTURES_DIR
KIT, REAL = SHARED / "icefall-kit", SHARED / "icefall-real"
needs_kit = pytest.mark.skipif(not KIT.is_dir() or not REAL.is_dir(),
                               reason=f"the icefall fixtures are not at {SHARED}")
CONFIGS = [f"icefall-kit/{n}" for n in ("zipformer-5stack", "zipformer-1layer-stacks", "conv-emformer-4layer",
                                         "conv-emformer-3layer", "lstm-3layer", "lstm-2layer")] + \
          [f"icefall-real/{n}" for n in ("zipformer", "conv-emformer", "lstm")]
ENC = "encoder_jit_trace-pnnx.ncnn.param"


def arch_of(config: str) -> str:
    name = config.split("/")[1]
    return "zipformer" if name.startswith("zipformer") else "conv-emformer" if name.startswith("conv") else "lstm"


def export_flags(config: str) -> dict[str, str]:
    tokens = (SHARED / config / "export-flags.txt").read_text().split()
    return dict(zip(tokens[::2], tokens[1::2]))


def write_without_cache_crop(src: Path, dst: Path) -> None:
    """A ConvEmformer ncnn param whose key-cache Crop lost its start (a graph these files cannot read fully)."""
    lines = src.read_text().splitlines(keepends=True)
    dst.write_text("".join(ln.replace(" -23309=1,-16", "") if " out2 " in ln else ln for ln in lines))


def truth(config: str) -> dict:
    """Every metadata value the flags give (icefall's default where a flag is absent)."""
    spec = get_arch(arch_of(config))
    flags = export_flags(config)
    return {hp.name: hp.parse(flags.get(hp.flag, hp.default)) for hp in spec.hyperparams if hp.meta_key is not None}


@needs_kit
@pytest.mark.parametrize("config", CONFIGS)
def test_pnnx_graph_and_traced_pt_each_reveal_every_metadata_value(config):
    d = SHARED / config
    expected = truth(config)
    sources = {"pnnx_param": d / "encoder.pnnx.param", "traced_pt": d / "traced" / "encoder_jit_trace-pnnx.pt"}
    read_any = False
    for kind, path in sources.items():
        if not path.is_file():
            continue
        read_any = True
        reading = read_graph(arch_of(config), **{kind: path})
        assert reading.problems == []
        assert {n: v for n, v in reading.values.items() if n in expected} == expected, (kind, reading.where)
    assert read_any


@needs_kit
@pytest.mark.parametrize("config", [c for c in CONFIGS if (SHARED / c / ENC).is_file()])
def test_the_ncnn_file_alone_reveals_what_it_can_and_never_a_wrong_value(config):
    expected = truth(config)
    reading = read_graph(arch_of(config), ncnn_param=SHARED / config / ENC)
    assert reading.problems == []
    assert all(expected[n] == v for n, v in reading.values.items() if n in expected)
    shown = set(reading.values) & set(expected)
    # LSTM: its layers' sizes; Zipformer: Slice counts, depthwise convolutions, attention and embedding Reshape
    # constants; ConvEmformer: depthwise convolutions, the key cache Crop, attention Reshape and chunk Slice
    assert shown == set(expected)
    if arch_of(config) == "zipformer":
        assert reading.values["nhead"] == get_arch("zipformer").param("nhead").parse(export_flags(config)["--nhead"])


@needs_kit
@pytest.mark.parametrize("config", CONFIGS)
def test_without_flags_the_metadata_is_what_the_export_flags_give(config):
    spec = get_arch(arch_of(config))
    d = SHARED / config
    reading = read_graph(spec, ncnn_param=d / ENC, pnnx_param=d / "encoder.pnnx.param",
                         traced_pt=d / "traced" / "encoder_jit_trace-pnnx.pt")
    resolved = reconcile(spec, {}, reading)
    assert resolved.ok, resolved.errors
    wanted = resolve(spec, export_flags(config))
    assert build_metadata(resolved).line == build_metadata(wanted).line
    assert all(resolved.sources[n] == GRAPH for n in truth(config))
    # the flags themselves are accepted (they agree with the graph)
    assert reconcile(spec, export_flags(config), reading).ok


@needs_kit
def test_a_flag_the_graph_contradicts_is_refused_naming_flag_value_and_graph():
    spec = get_arch("zipformer")
    reading = read_graph(spec, pnnx_param=KIT / "zipformer-1layer-stacks" / "encoder.pnnx.param")
    resolved = reconcile(spec, {"--encoder-dims": "384,384,384", "--decode-chunk-len": "32"}, reading)
    assert not resolved.ok
    [err] = resolved.errors
    assert err.flags == ("--encoder-dims",)
    assert "--encoder-dims 384,384,384 contradicts the model: its graph has 96,96,96" in err.message
    assert "encoder.pnnx.param" in err.message
    # icefall's defaults for a flag left out would contradict too, but a flag left out is read, not refused
    assert reconcile(spec, {}, reading).ok
    lstm = read_graph("lstm", traced_pt=KIT / "lstm-2layer" / "traced" / "encoder_jit_trace-pnnx.pt")
    bad = reconcile(get_arch("lstm"), {"--rnn-hidden-size": "1024"}, lstm)
    assert [e.flags for e in bad.errors] == [("--rnn-hidden-size",)] and "has 256" in bad.errors[0].message


@needs_kit
def test_ncnn_files_alone_refuse_what_they_cannot_confirm_and_take_given_flags(tmp_path):
    spec = get_arch("conv-emformer")
    write_without_cache_crop(KIT / "conv-emformer-3layer" / ENC, tmp_path / ENC)
    reading = read_graph(spec, ncnn_param=tmp_path / ENC)
    refused = reconcile(spec, {}, reading)
    flags = sorted(f for e in refused.errors for f in e.flags)
    assert flags == ["--chunk-length", "--left-context-length", "--memory-size", "--right-context-length"]
    msg = " ".join(e.message for e in refused.errors)
    assert "do not show it and it was not given" in msg and "*.pnnx.param" in msg and "encoder_jit_trace-pnnx.pt" in msg
    given = export_flags("icefall-kit/conv-emformer-3layer")
    ok = reconcile(spec, given, reading)
    assert ok.ok, ok.errors
    assert ok.sources["num_encoder_layers"] == GRAPH and ok.sources["memory_size"] == "given"
    wrong = dict(given, **{"--cnn-module-kernel": "31"})
    assert [e.flags for e in reconcile(spec, wrong, reading).errors] == [("--cnn-module-kernel",)]
    # a Zipformer's ncnn file shows every metadata value (attention Reshape constants): nothing to give
    shutil.copy(REAL / "zipformer" / ENC, tmp_path / ENC)
    zipformer = reconcile(get_arch("zipformer"), {}, read_graph("zipformer", ncnn_param=tmp_path / ENC))
    assert zipformer.ok and build_metadata(zipformer).line == build_metadata(
        resolve(get_arch("zipformer"), export_flags("icefall-real/zipformer"))).line


@needs_kit
def test_a_given_split_settles_what_the_graph_leaves_open(tmp_path):
    """Shapes alone (no pnnx layer names, no traced attributes) fix left context x factor per stack, and
    chunk + right context: a given factor list gives num-left-chunks, a given chunk the right context."""
    lines = [ln for ln in (KIT / "zipformer-1layer-stacks" / "encoder.pnnx.param").read_text().splitlines()
             if ln.startswith(("7767517", "pnnx.Input")) or ln[:1].isdigit()]
    (tmp_path / "z.pnnx.param").write_text("\n".join(lines) + "\n")
    spec = get_arch("zipformer")
    reading = read_graph(spec, pnnx_param=tmp_path / "z.pnnx.param")
    assert "zipformer_downsampling_factors" not in reading.values and "num_left_chunks" not in reading.values
    resolved = reconcile(spec, {"--zipformer-downsampling-factors": "1,2,4"}, reading)
    assert resolved.ok and resolved.values["num_left_chunks"] == 4 and resolved.sources["num_left_chunks"] == GRAPH
    bad = reconcile(spec, {"--zipformer-downsampling-factors": "1,2,2"}, reading)
    assert any("does not fit the graph's left context" in e.message for e in bad.errors)

    lines = [ln for ln in (KIT / "conv-emformer-3layer" / "encoder.pnnx.param").read_text().splitlines()
             if ln.startswith(("7767517", "pnnx.Input")) or ln[:1].isdigit()]
    (tmp_path / "c.pnnx.param").write_text("\n".join(lines) + "\n")
    spec = get_arch("conv-emformer")
    reading = read_graph(spec, pnnx_param=tmp_path / "c.pnnx.param")
    resolved = reconcile(spec, {"--chunk-length": "16"}, reading)
    assert resolved.ok and resolved.values["right_context_length"] == 4
    bad = reconcile(spec, {"--chunk-length": "16", "--right-context-length": "8"}, reading)
    assert any("= 24, but" in e.message and "31 frames" in e.message for e in bad.errors)


def _context(log: list[str]) -> StepContext:
    return StepContext("metadata", Path("."), log.append, lambda *a: None, threading.Event())


@needs_kit
def test_the_metadata_step_refuses_values_pnnx_graph_contradicts(tmp_path):
    """The normal run path: hyperparameters from flags, checked against the graph the pnnx step wrote."""
    layout = Layout(tmp_path / "out")
    layout.pnnx_dir.mkdir(parents=True)
    for ext in ("param", "bin"):
        shutil.copy(REAL / "lstm" / f"encoder_jit_trace-pnnx.ncnn.{ext}", layout.raw("encoder", ext))
    shutil.copy(REAL / "lstm" / "encoder.pnnx.param", layout.pnnx_dir / "encoder.pnnx.param")
    spec = get_arch("lstm")
    wrong = resolve(spec, {})  # icefall's defaults: 12 x 512 / 1024, the graph has 3 x 192 / 384
    log: list[str] = []
    with pytest.raises(StepError) as exc:
        make_finalize_encoder(layout, spec, wrong).func(_context(log))
    assert "--num-encoder-layers is 12 but the encoder's graph has 3" in str(exc.value)
    assert "--encoder-dim is 512" in str(exc.value) and "--rnn-hidden-size is 1024" in str(exc.value)
    assert "hyperparameters don't match" in exc.value.hint
    assert not layout.final("encoder", "param").exists()
    right = resolve(spec, export_flags("icefall-real/lstm"))
    log.clear()
    try:
        make_finalize_encoder(layout, spec, right).func(_context(log))
    except StepError as e:  # later checks (runtime layers of the unrewritten graph) may still object
        assert "graph has" not in str(e)
    assert any(line.startswith("[✓] --encoder-dim 192 = the graph") for line in log)


def test_graph_mismatches_names_only_metadata_values():
    spec = get_arch("lstm")
    from core.model.graph_hparams import GraphReading
    reading = GraphReading(spec, values={"num_encoder_layers": 2, "encoder_dim": 128},
                           where={"num_encoder_layers": "x", "encoder_dim": "y"})
    assert graph_mismatches(spec, {"num_encoder_layers": 2, "encoder_dim": 128, "aux_layer_period": 3}, reading) == []
    assert graph_mismatches(spec, {"num_encoder_layers": 4, "encoder_dim": 128}, reading) == [
        "--num-encoder-layers is 4 but the encoder's graph has 2 (x)"]


@needs_kit
def test_graph_mismatches_checks_what_the_shapes_fix_when_the_parts_are_unknown(tmp_path):
    """pnnx graphs without the layer names or split op still fix chunk + right context and left x factor."""
    lines = [ln for ln in (KIT / "conv-emformer-3layer" / "encoder.pnnx.param").read_text().splitlines()
             if ln.startswith(("7767517", "pnnx.Input")) or ln[:1].isdigit()]
    (tmp_path / "c.pnnx.param").write_text("\n".join(lines) + "\n")
    spec = get_arch("conv-emformer")
    reading = read_graph(spec, pnnx_param=tmp_path / "c.pnnx.param")
    good = resolve(spec, export_flags("icefall-kit/conv-emformer-3layer")).values
    assert graph_mismatches(spec, good, reading) == []
    assert graph_mismatches(spec, dict(good, chunk_length=32), reading) == [
        "--chunk-length 32 + --right-context-length 4 = 36, but c.pnnx.param: in0 has 31 frames = chunk + right "
        "context + 11"]
    lines = [ln for ln in (KIT / "zipformer-5stack" / "encoder.pnnx.param").read_text().splitlines()
             if ln.startswith(("7767517", "pnnx.Input")) or ln[:1].isdigit()]
    (tmp_path / "z.pnnx.param").write_text("\n".join(lines) + "\n")
    spec = get_arch("zipformer")
    reading = read_graph(spec, pnnx_param=tmp_path / "z.pnnx.param")
    good = resolve(spec, export_flags("icefall-kit/zipformer-5stack")).values
    assert graph_mismatches(spec, good, reading) == []
    [msg] = graph_mismatches(spec, dict(good, num_left_chunks=8), reading)
    assert "gives left contexts (128, 64, 32, 16, 64), but the encoder's graph has (64, 32, 16, 8, 32)" in msg


@needs_kit
def test_a_traced_pt_that_cannot_be_read_is_a_warning_and_nothing_in_it_runs(tmp_path):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    bad = tmp_path / "encoder_jit_trace-pnnx.pt"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("encoder_jit_trace-pnnx/data.pkl", pickle.dumps(Evil()))
        z.writestr("encoder_jit_trace-pnnx/traced_inputs.pkl", pickle.dumps(Evil()))
    (tmp_path / "lfs.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    for pt in (bad, tmp_path / "lfs.pt"):
        reading = read_graph("lstm", traced_pt=pt, pnnx_param=REAL / "lstm" / "encoder.pnnx.param")
        assert reading.problems == [] and reading.values["encoder_dim"] == 192
        assert len(reading.warnings) == 1 and str(pt) in reading.warnings[0]
    assert not (tmp_path / "ran").exists()
    # saved without its example inputs: nothing to read, said so
    with zipfile.ZipFile(KIT / "lstm-2layer" / "traced" / "encoder_jit_trace-pnnx.pt") as src, \
            zipfile.ZipFile(tmp_path / "bare.pt", "w") as dst:
        for item in src.infolist():
            if "traced_inputs" not in item.filename:
                dst.writestr(item, src.read(item))
    reading = read_graph("lstm", traced_pt=tmp_path / "bare.pt")
    assert reading.values == {} and "has no input shapes" in reading.warnings[0]
