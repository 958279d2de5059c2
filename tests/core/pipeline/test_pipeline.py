"""Config and plan: TOML round trip, problems named by key, exact commands, failure paths with a fake recipe."""
import asyncio
import os
import textwrap
import time
from pathlib import Path

import pytest

from core.pipeline.config import ConfigError, WizardConfig, config_from_dict, load_config
from core.pipeline.events import LogLines, StepFinished
from core.pipeline.plan import build_plan, describe_plan, tokens_flag
from core.pipeline.layout import PlanError
from core.pipeline.runner import Runner
from tests.paths import REPO

FAKE_EXPORT = textwrap.dedent('''
    import argparse, os, sys, time
    p = argparse.ArgumentParser()
    for f in ("--exp-dir", "--tokens", "--epoch", "--avg", "--use-averaged-model", "--iter"):
        p.add_argument(f)
    for f in ("--num-encoder-layers", "--encoder-dim", "--rnn-hidden-size", "--aux-layer-period", "--context-size"):
        p.add_argument(f)
    a = p.parse_args()
    mode = os.environ.get("FAKE_MODE", "ok")
    print("2026-01-01 00:00:00,000 INFO [export-for-ncnn.py:1] About to create model", file=sys.stderr, flush=True)
    assert os.path.exists(os.path.join(a.exp_dir, "epoch-99.pt")), "no epoch-99.pt"
    print(f"2026-01-01 00:00:00,000 INFO [checkpoint.py:1] Loading checkpoint from {a.exp_dir}/epoch-99.pt", file=sys.stderr)
    if mode == "mismatch":
        print("RuntimeError: Error(s) in loading state_dict for Transducer:", file=sys.stderr)
        print("\\tsize mismatch for encoder.x: copying a param with shape [4] from checkpoint", file=sys.stderr)
        sys.exit(1)
    print("2026-01-01 00:00:00,000 INFO [export-for-ncnn.py:2] Exporting encoder", file=sys.stderr, flush=True)
    if mode == "fail" and not os.path.exists(os.environ.get("FAKE_FIX", "/nonexistent")):
        print("Traceback (most recent call last):\\nValueError: boom", file=sys.stderr)
        sys.exit(1)
    if mode == "sleep":
        print("sleeping", flush=True)
        time.sleep(60)
    for net in ("encoder", "decoder", "joiner"):
        path = os.path.join(a.exp_dir, f"{net}_jit_trace-pnnx.pt")
        open(path, "wb").write(b"not a torchscript file")
        print(f"2026-01-01 00:00:00,000 INFO [export-for-ncnn.py:3] Saved to {path}", file=sys.stderr)
''')


def save_lstm_checkpoint(path, **changes):
    """A real (zero-weight) LSTM checkpoint matching the fake config: 2 layers, dim 32, hidden 48, 4 tokens."""
    import torch
    from checkpoint_factory import lstm_state, materialize
    args = dict(layers=2, dim=32, hidden=48, ff=16, decoder_dim=8, joiner_dim=8, vocab=4) | changes
    torch.save({"model": materialize(lstm_state(**args))}, path)


@pytest.fixture
def fake(tmp_path):
    """A fake icefall checkout (recipe, checkpoint, tokens) under a path with spaces."""
    root = tmp_path / "my icefall"
    recipe = root / "egs" / "librispeech" / "ASR" / "lstm_transducer_stateless2"
    recipe.mkdir(parents=True)
    (recipe / "export-for-ncnn.py").write_text('# parser.add_argument("--tokens")\n' + FAKE_EXPORT)
    exp = tmp_path / "model files" / "exp"
    exp.mkdir(parents=True)
    save_lstm_checkpoint(exp / "pretrained.pt")
    tokens = tmp_path / "model files" / "tokens.txt"
    tokens.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\na 3\n")
    config = WizardConfig(arch="lstm", hyperparameters={"num-encoder-layers": "2", "encoder-dim": "32",
                                                         "rnn-hidden-size": "48"})
    config.files.recipe = str(recipe)
    config.files.checkpoint = str(exp / "pretrained.pt")
    config.files.tokens = str(tokens)
    config.output.dir = str(tmp_path / "out dir")
    config.validation.decode = config.validation.numeric = False
    return config


def run_plan(planned, resume=False, during=None):
    events = []
    runner = Runner(planned.plan, events.append, resume=resume)

    async def main():
        task = asyncio.ensure_future(runner.run())
        if during:
            waiter = asyncio.ensure_future(during(runner, events))
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        return await task
    return asyncio.run(main()), events


def finished(events):
    return {e.step: e for e in events if isinstance(e, StepFinished)}


# -- config ---------------------------------------------------------------------

def test_config_round_trips_through_toml(tmp_path, fake):
    path = tmp_path / "wizard.toml"
    fake.save(path)
    back = load_config(path)
    assert back == fake


def test_config_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "wizard.toml"
    path.write_text('arch = "lstm"\n[files]\ncheckpoint = "exp/pretrained.pt"\n[output]\ndir = "out"\n')
    c = load_config(path)
    assert c.files.checkpoint == str(tmp_path / "cfg" / "exp" / "pretrained.pt")
    assert c.output.dir == str(tmp_path / "cfg" / "out")


@pytest.mark.parametrize("data,words", [
    ({"arch": "lstm", "files": {"chekpoint": "x"}}, "unknown key 'files.chekpoint'; did you mean 'files.checkpoint'?"),
    ({"arch": "lstm", "files": {"epoch": "x"}}, "files.epoch must be a whole number"),
    ({"arch": "lstm", "output": {"int8": "yes"}}, "output.int8 must be true or false"),
    ({"arch": "lstm", "hyperparameters": {"encoder-dims": "1"}}, "hyperparameters.encoder-dims is not a LSTM"),
    ({"arch": "zipformer2"}, "arch = 'zipformer2' is not one of"),
    ({"arch": "lstm", "validation": {"wavs": "a.wav"}}, "validation.wavs must be a list of strings"),
    ({"arch": "lstm", "bogus": 1}, "unknown key 'bogus'"),
])
def test_config_errors_name_the_key(data, words):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data, "wizard.toml")
    assert words in str(exc.value)


def test_config_accepts_list_hyperparameters():
    c = config_from_dict({"arch": "zipformer", "hyperparameters": {"num-encoder-layers": [2, 2]}})
    assert c.hyperparameters["num-encoder-layers"] == "2,2"


def test_toml_syntax_error_is_a_config_error(tmp_path):
    p = tmp_path / "w.toml"
    p.write_text("arch = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


# -- plan -----------------------------------------------------------------------

def test_plan_has_exact_commands(fake):
    planned = build_plan(fake)
    steps = {s.id: s for s in planned.plan.steps}
    assert list(steps) == ["prepare", "tokens", "export", "pnnx-encoder", "pnnx-decoder", "pnnx-joiner",
                           "rewrite", "metadata", "summary"]
    out = planned.out_dir
    export = steps["export"].argv
    i = export.index("--exp-dir")
    assert export[i + 1] == str(out / "work" / "exp")
    assert export[export.index("--tokens") + 1] == str(out / "tokens.txt")
    assert export[export.index("--epoch") + 1] == "99" and export[export.index("--avg") + 1] == "1"
    assert export[export.index("--use-averaged-model") + 1] == "0"
    assert export[export.index("--num-encoder-layers") + 1] == "2"
    assert steps["export"].cwd.name == "ASR"  # the recipe's parent, as icefall's docs run it
    assert steps["export"].env["PYTHONPATH"].split(os.pathsep)[0].endswith("my icefall")
    pnnx = steps["pnnx-encoder"].argv  # pnnx, run and checked by core.pnnx.convert
    assert pnnx[1:3] == ["-m", "core.pnnx.convert"] and Path(pnnx[pnnx.index("--pnnx") + 1]).name == "pnnx"
    assert pnnx[pnnx.index("--fp16") + 1] == "1"
    keys = {a.split("=", 1)[0] for a in pnnx if a.startswith("--") and "=" in a}
    assert keys == {"--pnnxparam", "--pnnxbin", "--pnnxpy", "--pnnxonnx", "--ncnnparam", "--ncnnbin", "--ncnnpy"}
    assert f"--ncnnparam={out / 'work' / 'pnnx' / 'encoder_jit_trace-pnnx.ncnn.param'}" in pnnx
    assert f"--ncnnparam={out / 'decoder_jit_trace-pnnx.ncnn.param'}" in steps["pnnx-decoder"].argv
    assert "exp" not in {p.name for p in steps["prepare"].outputs}  # the link, not the user's dir
    assert [p.name for p in steps["prepare"].outputs] == ["epoch-99.pt"]


def test_dry_run_description_and_script(fake):
    planned = build_plan(fake)
    lines = describe_plan(planned)
    assert lines[2][1].startswith("Export") and "--exp-dir" in lines[2][2]
    assert planned.script.startswith("#!/usr/bin/env bash")
    assert "ln -sfn" in planned.script and "sherpa-ncnn-wizard meta" in planned.script
    assert "PYTHONPATH=" in planned.script


def test_old_icefall_takes_bpe_model(tmp_path, fake):
    script = tmp_path / "old.py"
    script.write_text('parser.add_argument("--bpe-model", type=str)\n')
    assert tokens_flag(script) == "--bpe-model"
    recipe = tmp_path / "old recipe" / "r"
    recipe.mkdir(parents=True)
    (recipe / "export-for-ncnn.py").write_text('parser.add_argument("--bpe-model")\n')
    fake.files.recipe = str(recipe)
    with pytest.raises(PlanError, match="older icefall that takes --bpe-model"):
        build_plan(fake)


@pytest.mark.parametrize("change,words", [
    (lambda c: setattr(c.files, "checkpoint", "/nope/pretrained.pt"), "files.checkpoint: /nope/pretrained.pt not found"),
    (lambda c: setattr(c.files, "recipe", "/nope"), "files.recipe: /nope/export-for-ncnn.py not found"),
    (lambda c: setattr(c.files, "tokens", ""), "files.tokens: not set"),
    (lambda c: setattr(c.output, "int8", True), "calibration.wavs: int8 needs calibration audio"),
    (lambda c: setattr(c.tools, "pnnx", "/nope/pnnx"), "tools.pnnx: /nope/pnnx not found"),
    (lambda c: c.hyperparameters.update({"encoder-dim": "64"}), "--rnn-hidden-size 48 must be >= --encoder-dim 64"),
    (lambda c: setattr(c.files, "python", "/nope/python3"), "files.python: /nope/python3 not found"),
])
def test_plan_problems_name_the_field(fake, change, words):
    change(fake)
    with pytest.raises(PlanError) as exc:
        build_plan(fake)
    assert any(words in p for p in exc.value.problems), exc.value.problems


def test_foreign_non_empty_output_dir_is_refused(fake, tmp_path):
    out = tmp_path / "out dir"
    out.mkdir()
    (out / "my-notes.txt").write_text("keep me")
    with pytest.raises(PlanError, match="not empty and was not made by the wizard"):
        build_plan(fake)


def test_read_only_output_parent_is_refused(fake, tmp_path, read_only_dir):
    parent = tmp_path / "ro"
    parent.mkdir()
    fake.output.dir = str(parent / "out")
    with read_only_dir(parent):
        if os.access(parent, os.W_OK):
            pytest.skip("directory still writable")
        with pytest.raises(PlanError, match="not writable"):
            build_plan(fake)


def test_known_bad_pnnx_is_refused(fake, monkeypatch):
    from core.pnnx import tools
    monkeypatch.setattr(tools, "wheel_pnnx", lambda: (tools.Path("/bin/true"), "20261020"))
    with pytest.raises(PlanError, match="20261020 segfaults"):
        build_plan(fake)


# -- running with the fake recipe -----------------------------------------------------

def test_export_failing_midway_stops_the_run_with_the_tail(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    planned = build_plan(fake)
    status, events = run_plan(planned)
    f = finished(events)
    assert status == "failed" and f["export"].status == "failed" and f["export"].error == "exited with code 1"
    assert "ValueError: boom" in f["export"].tail
    assert (f["prepare"].status, f["tokens"].status) == ("ok", "ok")
    link = planned.out_dir / "work" / "exp" / "epoch-99.pt"
    assert link.is_symlink() and link.resolve() == (planned.out_dir.parent / "model files" / "exp" / "pretrained.pt")
    assert "pnnx-encoder" not in f
    log = (planned.out_dir / "logs" / "03-export.log").read_text()
    assert "Exporting encoder" in log and "ValueError: boom" in log


def test_wrong_hyperparameters_get_the_mismatch_hint(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "mismatch")
    status, events = run_plan(build_plan(fake))
    assert "don't match the checkpoint" in finished(events)["export"].hint


def test_pnnx_on_a_broken_torchscript_fails_with_a_hint(fake):
    status, events = run_plan(build_plan(fake))
    f = finished(events)
    assert f["export"].status == "ok" and f["pnnx-encoder"].status == "failed"
    assert "could not read the TorchScript file" in f["pnnx-encoder"].hint


def test_resume_after_a_failure_reruns_only_what_is_needed(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_MODE", "fail")
    fix = tmp_path / "fixed"
    monkeypatch.setenv("FAKE_FIX", str(fix))
    status, _ = run_plan(build_plan(fake))
    assert status == "failed"
    fix.write_text("now it works")
    status, events = run_plan(build_plan(fake), resume=True)
    f = finished(events)
    assert (f["prepare"].status, f["tokens"].status, f["export"].status) == ("skipped", "skipped", "ok")


def test_cancel_during_a_long_export_leaves_finished_steps(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    planned = build_plan(fake)

    async def cancel(runner, events):
        while not any(isinstance(e, LogLines) and "sleeping" in e.lines for e in events):
            await asyncio.sleep(0.02)
        runner.cancel()
    t0 = time.monotonic()
    status, events = run_plan(planned, during=cancel)
    assert status == "cancelled" and time.monotonic() - t0 < 10
    f = finished(events)
    assert f["export"].status == "cancelled" and f["tokens"].status == "ok"
    assert (planned.out_dir / "tokens.txt").exists()
    assert (planned.out_dir / "manifest.json").exists()


def test_ctrl_c_in_the_cli_cancels_and_exits_130(fake, tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    from conftest import REPO
    cfg = tmp_path / "wizard.toml"
    fake.save(cfg)
    env = dict(os.environ, FAKE_MODE="sleep")
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli.main", "run", "--config", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Export with icefall" in line:
            break
    ours = f"{tmp_path}/my icefall/egs"  # this test's export only (other workers run fake exports too)

    def export_running() -> bool:
        args = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout.splitlines()
        return any(ours in a for a in args)
    deadline = time.monotonic() + 20
    while not export_running():  # wait until the export process exists
        assert time.monotonic() < deadline, "the export process never started"
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=20)[0]
    assert proc.returncode == 130, "".join(lines) + rest
    assert time.monotonic() - t0 < 3  # the issue asks for the process group gone within 2 s; 1 s slack for load
    assert "cancelled" in rest
    assert not export_running()


def test_word_error_rate():
    from core.validation.decoding import word_error_rate
    assert word_error_rate("a b c d", "a b c d") == 0.0
    assert word_error_rate("a b c d", "a x c") == 0.5
    assert word_error_rate("", "") == 0.0
