"""``run --from-ncnn`` on the folders users really have, and with the model flags left out.

pnnx run the icefall docs' way names its output ``*_jit_trace_pnnx.*`` and writes by-products a tool must
ignore; icefall writes the traced ``.pt`` into ``exp/``. The plan finds all of it, names near misses when
something is missing, and reads the metadata values from the encoder's graph (marked ``graph``). The slow
tests run the whole CLI without flags on every kit/real configuration that has ncnn files and compare the
SherpaMetaData written with what the export flags give.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.model.architectures import get_arch, resolve
from core.pipeline.from_ncnn import build_from_ncnn_plan, locate_source
from core.model.metadata import build_metadata
from core.ncnn.param import load_param
from core.pipeline.layout import PlanError
from tests.core.model.test_graph_hparams import write_without_cache_crop
from tests.paths import KIT, REPO, SHARED_FIXTURES_DIR

SHARED = SHARED_FIXTURES_DIR
KIT, REAL = SHARED / "icefall-kit", SHARED / "icefall-real"
needs_kit = pytest.mark.skipif(not KIT.is_dir() or not REAL.is_dir(),
                               reason=f"the icefall fixtures are not at {SHARED}")
ZIP = KIT / "zipformer-1layer-stacks"
ENC = "encoder_jit_trace-pnnx.ncnn.param"
BYPRODUCTS = ("encoder_jit_trace_pnnx.pnnx.bin", "encoder_jit_trace_pnnx.pnnx.onnx", "encoder_jit_trace_pnnx_pnnx.py",
              "encoder_jit_trace_pnnx_ncnn.py", "decoder_jit_trace_pnnx.pnnx.bin", "joiner_jit_trace_pnnx_ncnn.py")


def export_flags(d: Path) -> dict[str, str]:
    tokens = (d / "export-flags.txt").read_text().split()
    return dict(zip(tokens[::2], tokens[1::2]))


def pnnx_default_folder(tmp_path: Path, traced_in: str = "exp") -> Path:
    """A user's folder after `pnnx encoder_jit_trace-pnnx.pt` (no options) next to icefall's exp/ output."""
    d = tmp_path / "user"
    d.mkdir()
    for f in (ZIP / "pnnx-default").iterdir():
        (d / f.name).symlink_to(f)
    (d / "tokens.txt").symlink_to(ZIP / "tokens.txt")
    for name in BYPRODUCTS:
        (d / name).write_bytes(b"pnnx by-product")
    if traced_in:
        (d / traced_in).mkdir(exist_ok=True)
        for f in (ZIP / "traced").iterdir():
            (d / traced_in / f.name).symlink_to(f)
    return d


@needs_kit
def test_pnnx_default_names_by_products_and_exp_are_found(tmp_path):
    d = pnnx_default_folder(tmp_path)
    files = locate_source(d)
    assert files.problems == []
    assert files.ncnn[("encoder", "param")].name == "encoder_jit_trace_pnnx.ncnn.param"
    assert files.pnnx_graph.name == "encoder_jit_trace_pnnx.pnnx.param"
    assert files.traced_dir == (d / "exp").resolve()
    run = build_from_ncnn_plan(d, "zipformer", {}, out_dir=tmp_path / "out")
    imported = {a.name: b.name for a, b in zip(run.plan.steps[0].inputs, run.plan.steps[0].outputs)}
    assert imported["encoder_jit_trace_pnnx.ncnn.param"] == "encoder_jit_trace-pnnx.ncnn.param"
    assert imported["encoder_jit_trace_pnnx.pnnx.param"] == "encoder.pnnx.param"
    assert not any(n in imported for n in BYPRODUCTS)
    assert run.traced_dir == (d / "exp").resolve()
    assert build_metadata(run.resolved).line == build_metadata(resolve(get_arch("zipformer"),
                                                                       export_flags(ZIP))).line
    assert {run.resolved.sources[hp.name] for hp in run.resolved.arch.hyperparams if hp.meta_key} == {"graph"}
    assert run.plan.manifest["hyperparameter_sources"]["--num-encoder-layers"] == "graph"


@needs_kit
@pytest.mark.parametrize("where", ["traced", "."])
def test_the_explicit_names_with_the_traced_pt_beside_or_in_traced(tmp_path, where):
    d = tmp_path / "user"
    d.mkdir()
    for f in ZIP.iterdir():
        if f.is_file():
            (d / f.name).symlink_to(f)
    for f in (ZIP / "traced").iterdir():
        ((d / where) / f.name).parent.mkdir(exist_ok=True)
        (d / where / f.name).symlink_to(f)
    run = build_from_ncnn_plan(d, "zipformer", {}, out_dir=tmp_path / "out")
    assert run.traced_dir == (d / where).resolve() and run.graph.files[0].name == "encoder_jit_trace-pnnx.pt"
    assert locate_source(d).pnnx_graph.name == "encoder.pnnx.param"


@needs_kit
def test_missing_files_name_what_was_looked_for_and_the_near_misses(tmp_path):
    d = pnnx_default_folder(tmp_path, traced_in="")
    (d / "encoder_jit_trace_pnnx.ncnn.param").unlink()
    (d / "encoder.ncnn.param").symlink_to(ZIP / "pnnx-default" / "encoder_jit_trace_pnnx.ncnn.param")
    (d / "tokens.txt").rename(d / "tokens-bpe500.txt")
    (d / "exp").mkdir()
    (d / "exp" / "encoder_jit_script.pt").write_bytes(b"not the trace")
    with pytest.raises(PlanError) as exc:
        build_from_ncnn_plan(d, "zipformer", {}, out_dir=tmp_path / "out")
    text = "\n".join(exc.value.problems)
    assert ("encoder_jit_trace-pnnx.ncnn.param not found in " in text
            and "(also looked for encoder_jit_trace_pnnx.ncnn.param); found instead: encoder.ncnn.param" in text)
    assert "pnnx.param" not in text.split("found instead:")[1].split("\n")[0]  # pnnx's graph is no near miss
    assert "tokens.txt not found" in text and "found instead: tokens-bpe500.txt" in text
    assert "hyperparameters:" not in text  # "not found" says it; no noise about what the graph cannot show
    with pytest.raises(PlanError) as exc:
        build_from_ncnn_plan(ZIP, "zipformer", {}, out_dir=tmp_path / "out", traced_dir=d / "exp")
    assert any("encoder_jit_trace-pnnx.pt not found; found instead: encoder_jit_script.pt" in p
               for p in exc.value.problems)


@needs_kit
def test_a_traced_pt_under_another_name_is_a_warning_when_the_graph_is_there(tmp_path):
    d = pnnx_default_folder(tmp_path, traced_in="")
    (d / "exp").mkdir()
    (d / "exp" / "encoder_jit_script.pt").write_bytes(b"x")
    run = build_from_ncnn_plan(d, "zipformer", {}, out_dir=tmp_path / "out")
    assert run.traced_dir is None
    assert any("exp/encoder_jit_script.pt" in w and "--traced-dir" in w for w in run.warnings)


@needs_kit
def test_cli_shows_each_value_with_its_source_and_refuses_a_contradiction(cli, tmp_path):
    d = pnnx_default_folder(tmp_path)
    code, out, err = cli("run", "--from-ncnn", d, "--arch", "zipformer", "--out", tmp_path / "o", "--dry-run")
    assert code == 0, err
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip().startswith("--")}
    assert "1,2,1" in lines["--num-encoder-layers"] and " graph " in lines["--num-encoder-layers"]
    assert "15,15,31" in lines["--cnn-module-kernels"] and "cached_conv width + 1" in lines["--cnn-module-kernels"]
    code, out, err = cli("run", "--from-ncnn", d, "--arch", "zipformer", "--num-encoder-layers", "2,4,3,2,4",
                         "--out", tmp_path / "o", "--dry-run")
    assert code == 2
    assert "--num-encoder-layers 2,4,3,2,4 contradicts the model: its graph has 1,2,1" in " ".join(err.split())


@needs_kit
def test_cli_with_only_ncnn_files_refuses_what_it_cannot_confirm(cli, tmp_path):
    src = KIT / "conv-emformer-3layer"
    d = tmp_path / "user"
    d.mkdir()
    for f in src.iterdir():
        if (".ncnn." in f.name or f.name == "tokens.txt") and f.name != ENC:
            (d / f.name).symlink_to(f)
    write_without_cache_crop(src / ENC, d / ENC)  # these ncnn files cannot show the contexts
    code, out, err = cli("run", "--from-ncnn", d, "--arch", "conv-emformer", "--out", tmp_path / "o", "--dry-run")
    msg = " ".join(err.split())
    assert code == 2 and "--memory-size: the encoder's graph files" in msg and "give --memory-size" in msg
    flags = [x for kv in export_flags(src).items() for x in kv]
    code, out, err = cli("run", "--from-ncnn", d, "--arch", "conv-emformer", *flags, "--out", tmp_path / "o",
                         "--dry-run")
    assert code == 0, err
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip().startswith("--")}
    assert " given" in rows["--memory-size"] and " graph " in rows["--encoder-dim"]


@needs_kit
def test_wizard_logic_reads_the_graph_and_refuses_a_contradicting_edit(tmp_path):
    from tui.wizard import logic
    d = pnnx_default_folder(tmp_path)
    arch = logic.guess_arch(logic.ncnn_encoder_param(str(d)))
    assert arch == "zipformer"
    detected = logic.detect_ncnn_graph(str(d), arch)
    assert detected.ok and detected.origin == "graph"
    assert detected.hyperparameters["num-encoder-layers"] == "1,2,1"
    assert detected.hyperparameters["feedforward-dims"] == "1024,1024,1024"  # sized to the graph's 3 stacks
    assert logic.field_mark("num_encoder_layers", "1,2,1", "2,4,3,2,4", detected) == "from the graph"
    assert logic.field_mark("num_encoder_layers", "2,2,2", "2,4,3,2,4", detected) == "✗ the graph has 1,2,1"
    spec = get_arch("zipformer")
    form = {f"--{k}": v for k, v in detected.hyperparameters.items()}
    assert logic.form_state(spec, form, detected).ok
    state = logic.form_state(spec, dict(form, **{"--encoder-dims": "384,384,384"}), detected)
    assert not state.ok and "its graph has 96,96,96" in state.field_errors["--encoder-dims"][0]
    lines = logic.describe_ncnn_dir(str(d), arch)
    assert any("metadata value(s) read from the graph" in ln for ln in lines)
    assert any("traced *.pt files (in exp/)" in ln for ln in lines)


# -- slow: the whole run without flags --------------------------------------------------------

RUNS = [("icefall-kit/zipformer-1layer-stacks", "zipformer", None),
        ("icefall-kit/conv-emformer-3layer", "conv-emformer", None),
        ("icefall-kit/lstm-2layer", "lstm", None),
        # the real fixtures' ncnn files are byte-identical to pnnx's output of these kit traces (kit README)
        ("icefall-real/zipformer", "zipformer", "icefall-kit/zipformer-5stack/traced"),
        # pnnx 20260526 mis-converted this encoder: given its traced .pt (the kit's identical export) it is
        # converted again; without it the plan is refused (tests/core/rewrite/test_rewrite.py)
        ("icefall-real/conv-emformer", "conv-emformer", "icefall-kit/conv-emformer-4layer/traced"),
        ("icefall-real/lstm", "lstm", "icefall-kit/lstm-3layer/traced")]


@pytest.mark.slow
@needs_kit
@pytest.mark.parametrize("config,arch,traced", RUNS, ids=[r[0].split("/")[1] + "-" + r[0][8:12] for r in RUNS])
def test_run_from_ncnn_without_flags_writes_the_metadata_the_flags_give(cli, tmp_path, config, arch, traced):
    d = SHARED / config
    out = tmp_path / "out"
    extra = ["--traced-dir", SHARED / traced] if traced else []
    wavs = [a for w in sorted((REPO / "assets" / "demo" / "test_wavs").glob("*.wav"))[:2] for a in ("--wav", w)]
    code, stdout, stderr = cli("run", "--from-ncnn", d, "--arch", arch, *extra, *wavs, "--int8", "--out", out)
    meta = load_param(out / "encoder_jit_trace-pnnx.ncnn.param").model.layers[0]
    assert meta.type == "SherpaMetaData", stdout + stderr
    wanted = build_metadata(resolve(get_arch(arch), export_flags(d))).line.split()[4:]
    assert [p.text for p in meta.params] == wanted
    manifest = json.loads((out / "manifest.json").read_text())
    sources = manifest["hyperparameter_sources"]
    assert all(sources[hp.flag] == "graph" for hp in get_arch(arch).hyperparams if hp.meta_key is not None)
    assert code == 0, stdout + stderr  # validated end to end (the one-layer stacks' Slice: core/rewrite_zipformer)
    report = json.loads((out / "validation.json").read_text())
    assert report["ok"] and report["decode"]["ok"] and report["decode_int8"]["ok"]
    # torch (the traced modules, streamed like sherpa-ncnn) and sherpa-ncnn agree token for token on fp16
    fp16 = [a for a in report["agreement"] if a["model"] == "fp16"]
    assert len(fp16) == 2 and all(a["match"] for a in fp16), fp16
    assert all(0 <= a["rate"] <= 1 for a in report["agreement"] if a["model"] == "int8")
    assert report["timings"]["sherpa-ncnn fp16 decode"] > 0, report["timings"]  # as in a run from a checkpoint


@needs_kit
async def test_wizard_ncnn_path_fills_the_form_from_the_graph_and_refuses_a_contradiction(tmp_path):
    import time

    from tui.wizard.app import make_app
    from tui.wizard.ncnn import NcnnDirScreen, NcnnHyperScreen
    from tui.wizard.review import QuantScreen, ReviewScreen

    def text(app, selector: str) -> str:
        return str(app.screen.query_one(selector).render())

    async def wait_for(pilot, predicate, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out waiting for the wizard"
            await pilot.pause(0.1)

    d = pnnx_default_folder(tmp_path)
    app = make_app(out_dir=str(tmp_path / "out"))
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, NcnnDirScreen)
        app.screen.query_one("#ncnn-dir").value = str(d)
        await wait_for(pilot, lambda: "read from the graph" in text(app, "#ncnn-found"))
        assert "traced *.pt files (in exp/)" in text(app, "#ncnn-found")
        for _ in range(4):
            if isinstance(app.screen, NcnnHyperScreen):
                break
            await pilot.press("ctrl+n")
            await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NcnnHyperScreen)
        assert screen.query_one("#hp-num_encoder_layers").value == "1,2,1"
        assert "from the graph" in text(app, "#d-num_encoder_layers")
        screen.query_one("#hp-encoder_dims").value = "384,384,384"
        await pilot.pause()
        assert "contradicts the model: its graph has 96,96,96" in text(app, "#r-encoder_dims")
        assert screen.query_one("#next").disabled
        screen.query_one("#hp-encoder_dims").value = ""  # empty: the graph's value
        await pilot.pause()
        assert not screen.query_one("#next").disabled
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, QuantScreen)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen)
        await wait_for(pilot, lambda: getattr(app.screen, "plan_state", "pending") != "pending")
        assert app.screen.plan_state == "ok", text(app, "#problems")
    assert app.config.files.from_ncnn == str(d.resolve())
