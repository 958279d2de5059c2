"""ncnn never takes the tool down (core/ncnn/child.py): real crashes, in child processes.

The crashing model is real: the icefall kit's one-layer-stack Zipformer (``--num-encoder-layers 1,2,1``)
rewritten the way the unbind rule did before it knew one-output Slices, i.e. with pnnx's 8 parameterless
one-output ``Slice`` layers left in (ncnn's Slice then reads a NULL slices array: SIGSEGV), plus its
SherpaMetaData. ``doctor --run`` must name that layer; calibration on it must end with a sentence naming the
step, the file and the layer (exit 1 for the command; a failed step with its log and manifest for a run).
"""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.pipeline.demo import demo_recipe
from tests.paths import KIT

ONE_LAYER = KIT / "zipformer-1layer-stacks"
LSTM = KIT / "lstm-2layer"
pytestmark = pytest.mark.skipif(not ONE_LAYER.is_dir(), reason=f"the icefall kit is not at {KIT}")
NET = "{}_jit_trace-pnnx.ncnn.{}"
ONE_OUTPUT_UNBINDS = {f"unbind_{i}" for i in (0, 1, 5, 6, 14, 15, 19, 20)}


def _model(dst: Path, crash: bool) -> Path:
    """The kit's 1,2,1 Zipformer made sherpa-ready (rewrite + metadata); ``crash``: the one-output unbinds put
    back as pnnx wrote them (a Slice without parameters)."""
    from core.model.architectures import get_arch, resolve
    from core.model.metadata import apply_plan, build_metadata, plan_metadata
    from core.ncnn.param import format_layer_line, load_param
    from core.rewrite.driver import apply_rewrites, plan_file
    dst.mkdir(parents=True)
    for net in ("decoder", "joiner"):
        for ext in ("param", "bin"):
            shutil.copyfile(ONE_LAYER / NET.format(net, ext), dst / NET.format(net, ext))
    shutil.copyfile(ONE_LAYER / "tokens.txt", dst / "tokens.txt")
    raw = ONE_LAYER / NET.format("encoder", "param")
    plan = plan_file(raw, pnnx_param=ONE_LAYER / "encoder.pnnx.param", arch="zipformer")
    enc = dst / NET.format("encoder", "param")
    apply_rewrites(plan, raw, ONE_LAYER / NET.format("encoder", "bin"), out_param=enc,
                   out_bin=dst / NET.format("encoder", "bin"))
    spec = get_arch("zipformer")
    words = (ONE_LAYER / "export-flags.txt").read_text().split()
    resolved = resolve(spec, dict(zip(words[::2], words[1::2])))
    assert resolved.ok, resolved.errors
    meta = plan_metadata(load_param(enc).model, build_metadata(resolved), resolved.values)
    apply_plan(meta, enc)
    for backup in dst.glob("*.orig"):
        backup.unlink()
    if crash:
        model = load_param(enc).model
        lines = enc.read_text().splitlines(keepends=True)
        for layer in model.layers:
            if layer.name in ONE_OUTPUT_UNBINDS:
                lines[layer.line - 1] = format_layer_line("Slice", layer.name, list(layer.bottoms), list(layer.tops),
                                                          []) + "\n"
        enc.write_text("".join(lines))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    return {"good": _model(root / "good", crash=False), "crash": _model(root / "crash", crash=True)}


def _first_unbind_line(d: Path) -> int:
    from core.ncnn.param import load_param
    return load_param(d / NET.format("encoder", "param")).model.layer_named("unbind_0").line


def test_doctor_run_names_the_layer_that_crashes_ncnn(cli, models):
    d = models["crash"]
    code, out, err = cli("doctor", d, "--run", "--json")
    report = json.loads(out)
    assert code == 1 and report["healthy"] is False
    line = _first_unbind_line(d)
    ran = [f for f in report["findings"] if "first that crashes" in f["message"]]
    assert len(ran) == 1 and ran[0]["line"] == line
    assert "layer 'unbind_0' (Slice)" in ran[0]["message"] and "killed by SIGSEGV" in ran[0]["message"]
    # the same directory, fixed: every net runs, and doctor calls it healthy
    code, out, _ = cli("doctor", models["good"], "--run", "--json")
    good = json.loads(out)
    assert code == 0 and good["healthy"], [f for f in good["findings"] if f["severity"] != "ok"]
    assert sum("ncnn ran all" in f["message"] for f in good["findings"]) == 3


def test_the_crash_is_found_by_bisection_too(models):
    """Without trusting the first child's last 'at N' line, bisecting fresh children finds the same layer."""
    from core.validation.crash import locate_crash
    d = models["crash"]
    quick = locate_crash(d / NET.format("encoder", "param"), d / NET.format("encoder", "bin"))
    slow = locate_crash(d / NET.format("encoder", "param"), d / NET.format("encoder", "bin"), trust_marks=False)
    assert quick.name == slow.name == "unbind_0" and quick.line == slow.line == _first_unbind_line(d)
    assert quick.attempts == 3 and slow.attempts > quick.attempts
    assert quick.exit.startswith("killed by SIGSEGV")


def test_doctor_run_on_the_kit_lstm_as_pnnx_wrote_it_names_the_layer_ncnn_lacks(cli, tmp_path):
    d = tmp_path / "lstm"
    d.mkdir()
    for f in list(LSTM.glob("*_jit_trace-pnnx.ncnn.*")) + [LSTM / "encoder.pnnx.param", LSTM / "tokens.txt"]:
        shutil.copyfile(f, d / f.name)
    code, out, _ = cli("doctor", d, "--run", "--json")
    report = json.loads(out)
    assert code == 1
    enc = [f for f in report["findings"] if f["file"].endswith(NET.format("encoder", "param"))
           and "could not load" in f["message"]]
    assert len(enc) == 1 and "Tensor.to" in enc[0]["message"]


def test_calibrate_command_on_a_crashing_model_exits_1_with_a_sentence(cli, models, tmp_path):
    d = models["crash"]
    wav = demo_recipe("lstm").test_wavs[0]
    code, out, err = cli("calibrate", d, "--wav", wav, "--out", tmp_path / "tables")
    assert code == 1
    text = " ".join(err.split())
    assert "calibrate: ncnn crashed (killed by SIGSEGV" in text
    assert f"layer 'unbind_0' (Slice) at line {_first_unbind_line(d)}" in text and "encoder_jit_trace" in text
    assert not (tmp_path / "tables" / "encoder-scale-table.txt").exists()


def _calibrate_run(files, out: Path, wavs):
    from core.pipeline.int8_steps import make_calibrate
    from core.pipeline.layout import Layout
    from core.pipeline.runner import Plan, Runner
    events = []
    plan = Plan([make_calibrate(Layout(out), wavs, files)], out, manifest={"tool": "test"})
    runner = Runner(plan, events.append)
    status = asyncio.run(runner.run())
    return status, runner.results["calibrate"], events


def _files(d: Path):
    from core.int8.calibration import ModelFiles
    return ModelFiles(*(d / NET.format(n, e) for n in ("encoder", "decoder", "joiner") for e in ("param", "bin")))


def test_a_calibration_step_on_a_crashing_model_fails_with_a_sentence_and_keeps_log_and_manifest(models, tmp_path):
    out = tmp_path / "run"
    status, finished, _ = _calibrate_run(_files(models["crash"]), out, demo_recipe("lstm").test_wavs[:1])
    assert status == "failed" and finished.status == "failed"
    line = _first_unbind_line(models["crash"])
    assert finished.error.startswith("calibrate: ncnn crashed (killed by SIGSEGV")
    assert f"layer 'unbind_0' (Slice) at line {line}" in finished.error
    log = (out / "logs" / "01-calibrate.log").read_text()
    assert f"layer 'unbind_0' (Slice) at line {line}" in log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["steps"][0]["error"] == finished.error


def test_calibration_in_a_child_gives_the_in_process_tables_with_live_progress(models, tmp_path):
    """The child's tables are the in-process ones, bit for bit, and its progress arrives as it goes."""
    from core.int8.calibration import calibrate
    from core.int8.children import calibrate_in_child
    files, wavs = _files(models["good"]), demo_recipe("lstm").test_wavs[:2]
    seen = []
    child = calibrate_in_child(files, wavs, on_progress=lambda i, n, note: seen.append((i, n)))
    here = calibrate(files, wavs, workers=1)
    assert child.encoder.text() == here.encoder.text() and child.joiner.text() == here.joiner.text()
    assert seen[0] == (0, 2) and seen[-1] == (2, 2) and len(seen) >= 3
    first = next(iter(here.encoder.activations.values()))
    got = child.encoder.activations[first.layer]
    assert np.isclose(got.absmax, first.absmax) and np.isclose(got.threshold, first.threshold)


def test_cancel_stops_the_calibration_child(models):
    import time

    from core.ncnn.child import ChildCancelled
    from core.int8.children import calibrate_in_child
    t0 = time.monotonic()
    with pytest.raises(ChildCancelled):
        calibrate_in_child(_files(models["good"]), demo_recipe("lstm").test_wavs[:2], cancelled=lambda: True)
    assert time.monotonic() - t0 < 10


def test_the_int8_check_runs_in_a_child_and_a_crash_names_the_layer(models):
    """compare_int8 with an 'int8' encoder that crashes ncnn: the caller gets NcnnCrash with the sentence."""
    from core.int8.check import compare_int8
    from core.ncnn.child import NcnnCrash
    good, bad = models["good"], models["crash"]
    enc = (bad / NET.format("encoder", "param"), bad / NET.format("encoder", "bin"))
    joiner = (good / NET.format("joiner", "param"), good / NET.format("joiner", "bin"))
    with pytest.raises(NcnnCrash) as info:
        compare_int8(_files(good), enc, joiner, demo_recipe("lstm").test_wavs[:1])
    text = str(info.value)
    assert text.startswith("int8 check: ncnn crashed (killed by SIGSEGV")
    assert f"layer 'unbind_0' (Slice) at line {_first_unbind_line(bad)} of {enc[0]}" in text
    sims = compare_int8(_files(good), (good / NET.format("encoder", "param"), good / NET.format("encoder", "bin")),
                        joiner, demo_recipe("lstm").test_wavs[:1])
    assert [(s.net, s.output) for s in sims] == [("encoder", "out0"), ("joiner", "out0")]
    assert all(s.mean_cosine > 0.999 for s in sims)  # the same float model on both sides


def test_cancelling_a_run_during_calibration_stops_the_child_and_the_step(models, tmp_path):
    """Cancel as soon as the calibration child reports progress: the step ends 'cancelled', no table is left."""
    from core.pipeline.events import Progress
    from core.pipeline.int8_steps import make_calibrate
    from core.pipeline.layout import table_file
    from core.pipeline.layout import Layout
    from core.pipeline.runner import Plan, Runner
    out = tmp_path / "run"
    plan = Plan([make_calibrate(Layout(out), demo_recipe("lstm").test_wavs[:3], _files(models["good"]))], out)
    runner = None

    def on_event(event):
        if isinstance(event, Progress) and event.step == "calibrate":
            runner.cancel()

    runner = Runner(plan, on_event)
    assert asyncio.run(runner.run()) == "cancelled"
    assert runner.results["calibrate"].status == "cancelled"
    assert not table_file(Layout(out), "encoder").exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "cancelled"
    assert not _children_calibrating(models["good"])


def _children_calibrating(model_dir: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "core.int8.children calibrate" in text and str(model_dir) in text:
            found.append(text)
    return found
