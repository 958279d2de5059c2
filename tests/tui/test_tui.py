"""The Textual wizard, driven with Textual's Pilot: the demo flow, validation, paste, Back, cancel, failure."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from core.model.architectures import get_arch, resolve
from core.pipeline.config import WizardConfig
from core.pipeline.demo import demo_config, demo_recipe
from core.model.metadata import build_metadata
from tui.wizard.app import WizardApp, make_app
from tui.wizard.run import RunScreen, SummaryScreen
from tui.wizard.screens import ArchScreen, FilesScreen, HyperScreen, StartScreen
from tui.wizard.review import QuantScreen, ReviewScreen
from tests.paths import REPO, SHARED_REAL

SIZE = (100, 32)


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())



async def wait_for(pilot, predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the wizard")
        await pilot.pause(0.1)


def run_done(app: WizardApp) -> bool:
    return app.run_model is not None and app.run_model.status != "running" and not app.run_in_progress


def expected_meta_line(arch: str) -> str:
    config = demo_config(arch)
    return build_metadata(resolve(get_arch(arch), config.hyperparameter_flags())).line


async def review_ready(pilot) -> None:
    """The review screen plans in a thread (build_plan reads the checkpoint): wait for it."""
    assert isinstance(pilot.app.screen, ReviewScreen), pilot.app.screen
    await wait_for(pilot, lambda: getattr(pilot.app.screen, "plan_state", "pending") != "pending", timeout=60)
    await pilot.pause()


async def go_to(pilot, screen_type, presses: int = 8) -> None:
    for _ in range(presses):
        if isinstance(pilot.app.screen, ReviewScreen):
            await review_ready(pilot)
        if isinstance(pilot.app.screen, screen_type):
            return
        await pilot.press("enter")
        await pilot.pause()
    assert isinstance(pilot.app.screen, screen_type), pilot.app.screen


async def audio_checked(pilot) -> None:
    """The quantization screen reads the calibration audio in a worker: wait for its verdict."""
    await pilot.pause()
    await wait_for(pilot, lambda: not pilot.app.screen.pending(), timeout=30)
    await pilot.pause()


def demo_arch_button(arch: str) -> str:
    return f"#arch-{arch}"


# -- the whole demo flow -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch", ["zipformer", "conv-emformer", "lstm"])
async def test_demo_flow_by_enter_only_reaches_a_finished_run(tmp_path, cli_json, arch):
    app = make_app(out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, StartScreen)
        if arch != "zipformer":
            await pilot.click(demo_arch_button(arch))
            app.screen.query_one("#demo").focus()
        await go_to(pilot, ReviewScreen)
        # the preview: the SherpaMetaData line is what `meta` computes for the demo's flags
        assert text(app, "#meta-line") == expected_meta_line(arch)
        assert "Nothing has been written yet" in text(app, "#nothing-written")
        assert not (tmp_path / "out").exists()
        table = app.screen.query_one("#meta-table")
        assert table.row_count == len(build_metadata(resolve(get_arch(arch), demo_config(arch)
                                                             .hyperparameter_flags())).entries)
        assert "export-for-ncnn.py" in text(app, "#commands")
        await pilot.press("enter")  # Run
        await pilot.pause()
        assert isinstance(app.screen, RunScreen)
        await wait_for(pilot, lambda: run_done(app))
        await pilot.pause(0.3)
        assert app.run_model.status == "ok"
        assert [s.status for s in app.run_model.steps] == ["ok"] * len(app.run_model.steps)
        assert "all steps done" in text(app, "#run-status")
        await pilot.press("enter")  # Summary (focused when the run finished)
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        transcripts = text(app, "#transcripts")
        first = Path(demo_recipe(arch).test_wavs[0]).name
        assert first in transcripts
        assert "sherpa_ncnn.Recognizer(" in text(app, "#snippet")
        assert "✓" in text(app, "#checks") and "✗" not in text(app, "#checks")
    out = tmp_path / "out"
    raw = out / "work" / "pnnx" / "encoder_jit_trace-pnnx.ncnn.param"
    code, meta = cli_json("meta", raw, "--arch", arch, *demo_recipe(arch).flags)
    assert code == 0 and meta["line"] == expected_meta_line(arch)
    assert (out / "wizard.toml").is_file() and (out / "export.sh").is_file()


# -- hyperparameters -------------------------------------------------------------------------

async def test_invalid_field_disables_next_with_the_reason(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, HyperScreen)
        screen = app.screen
        assert not screen.query_one("#next").disabled
        screen.query_one("#hp-decode_chunk_len").value = "abc"
        await pilot.pause()
        assert screen.query_one("#next").disabled
        reason = text(app, "#r-decode_chunk_len")
        assert "--decode-chunk-len" in reason and "not a whole number" in reason
        assert screen.query_one("#hp-decode_chunk_len").has_class("-invalid")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, HyperScreen)  # Next refused
        # a cross-field error (stack lists of different lengths) is listed below the form
        screen.query_one("#hp-decode_chunk_len").value = "32"
        screen.query_one("#hp-num_encoder_layers").value = "2,2"
        await pilot.pause()
        assert screen.query_one("#next").disabled
        assert text(app, "#r-decode_chunk_len") == ""
        assert "--num-encoder-layers" in text(app, "#cross-errors") + text(app, "#r-num_encoder_layers")
        screen.query_one("#hp-num_encoder_layers").value = ""  # empty: icefall's default
        await pilot.pause()
        state_ok = not screen.query_one("#next").disabled
        assert state_ok == resolve(get_arch("zipformer"), {k: v for k, v in screen.given().items() if v}).ok


async def test_pasted_flags_fill_the_form(tmp_path):
    app = make_app(demo="lstm", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, HyperScreen)
        screen = app.screen
        await pilot.press("ctrl+f")
        assert app.focused is screen.query_one("#paste")
        screen.query_one("#paste").value = ("./lstm_transducer_stateless2/export-for-ncnn.py --exp-dir ./exp "
                                            "--tokens data/lang_bpe_500/tokens.txt --epoch 99 --avg 1 "
                                            "--num-encoder-layers 12 --encoder-dim=512 --rnn-hidden-size 1024 "
                                            "--bogus-flag 3")
        await pilot.press("enter")
        await pilot.pause()
        assert screen.query_one("#hp-num_encoder_layers").value == "12"
        assert screen.query_one("#hp-encoder_dim").value == "512"
        assert screen.query_one("#hp-rnn_hidden_size").value == "1024"
        result = text(app, "#paste-result")
        assert "filled 3 flag(s)" in result and "--epoch" in result and "--bogus-flag" in result
        assert not screen.query_one("#next").disabled
        await pilot.press("ctrl+n")
        await pilot.press("ctrl+n")
        await pilot.pause()
        await review_ready(pilot)
        assert "1=12 2=512 3=1024" in text(app, "#meta-line")


async def test_back_keeps_what_was_entered(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, FilesScreen)
        app.screen.query_one("#f-out").value = str(tmp_path / "elsewhere")
        await go_to(pilot, HyperScreen)
        app.screen.query_one("#hp-decode_chunk_len").value = "64"
        await pilot.pause()
        await pilot.press("escape")  # back to Architecture
        await pilot.pause()
        assert isinstance(app.screen, ArchScreen)
        await pilot.press("escape")  # back to Files: the edited value is still there
        await pilot.pause()
        assert isinstance(app.screen, FilesScreen)
        assert app.screen.query_one("#f-out").value == str(tmp_path / "elsewhere")
        await go_to(pilot, HyperScreen)  # a new hyperparameter screen starts from what was typed
        assert app.screen.query_one("#hp-decode_chunk_len").value == "64"
        await go_to(pilot, ReviewScreen)
        assert "1=64" in text(app, "#meta-line")
        assert str(tmp_path / "elsewhere") in text(app, "#commands")


async def test_int8_choice_checks_the_calibration_audio(tmp_path):
    app = make_app(demo="lstm", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, QuantScreen)
        screen = app.screen
        assert screen.query_one("#q-fp16").value and screen.query_one("#cal-wavs").disabled
        screen.query_one("#q-int8").value = True
        await audio_checked(pilot)
        assert not screen.query_one("#cal-wavs").disabled
        given = len(demo_config("lstm").calibration.wavs)  # the demo's calibration audio (however many)
        assert f"{given} usable wav(s)" in text(app, "#cal-check") and not screen.query_one("#next").disabled
        screen.query_one("#cal-wavs").value = str(tmp_path / "missing.wav")
        await audio_checked(pilot)
        assert "missing.wav" in text(app, "#cal-check") and screen.query_one("#next").disabled
        folder = demo_recipe("lstm").test_wavs[0].parent
        in_folder = len(list(folder.glob("*.wav")))
        screen.query_one("#cal-wavs").value = str(folder)  # a folder
        await audio_checked(pilot)
        assert f"{in_folder} usable wav(s)" in text(app, "#cal-check")
        await pilot.click("#next")
        await pilot.pause()
        await review_ready(pilot)
        commands = text(app, "#commands")
        assert "Calibrate int8 scales" in commands and "Quantize encoder and joiner" in commands
        assert app.config.output.int8 and len(app.config.calibration.wavs) == in_folder


# -- run: cancel and failure -------------------------------------------------------------------

def process_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def blocking_recipe(tmp_path: Path) -> WizardConfig:
    """The demo LSTM recipe whose export waits (for a file that never comes) until it is cancelled: a cancel test
    must not race a fast export."""
    import shutil

    from core.pipeline.demo import DEMO_ROOT
    icefall = tmp_path / "icefall-copy"
    shutil.copytree(DEMO_ROOT / "icefall", icefall)
    script = icefall / "egs" / "librispeech" / "ASR" / "lstm_transducer_stateless2" / "export-for-ncnn.py"
    text = script.read_text()
    marker = "\nimport "
    at = text.index(marker)
    script.write_text(text[:at] + "\nimport os as _os, time as _time\nprint('export waiting', flush=True)\n"
                      f"while not _os.path.exists({str(tmp_path / 'never')!r}):\n    _time.sleep(0.05)\n"
                      + text[at:])
    config = demo_config("lstm")
    config.files.recipe = str(script.parent)
    config.output.dir = str(tmp_path / "out")
    return config


@pytest.mark.slow
async def test_cancel_mid_run_leaves_the_step_cancelled_and_no_process(tmp_path):
    app = WizardApp(config=blocking_recipe(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await review_ready(pilot)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.runner is not None and app.runner._procs
                       and app.run_model.by_id["export"].status == "running", timeout=60)
        pid = next(iter(app.runner._procs)).pid
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")  # confirm
        await wait_for(pilot, lambda: run_done(app), timeout=30)
        await pilot.pause(0.2)
        assert app.run_model.status == "cancelled"
        assert app.run_model.by_id["export"].status == "cancelled"
        assert not process_alive(pid)
        assert "cancelled" in text(app, "#run-status")
        assert not app.screen.query_one("#resume").disabled


def failing_recipe(tmp_path: Path) -> WizardConfig:
    recipe = tmp_path / "icefall" / "egs" / "librispeech" / "ASR" / "broken_recipe"
    recipe.mkdir(parents=True)
    (recipe / "export-for-ncnn.py").write_text(
        "import sys\nprint('parser.add_argument(\"--tokens\")')\n"
        "print('Traceback (most recent call last):')\n"
        "print(\"ModuleNotFoundError: No module named 'k2'\")\nsys.exit(1)\n")
    demo = demo_recipe("lstm")
    config = WizardConfig(arch="lstm")
    config.hyperparameters = {demo.flags[i].lstrip("-"): demo.flags[i + 1] for i in range(0, len(demo.flags), 2)}
    config.files.recipe = str(recipe)
    config.files.checkpoint = str(demo.checkpoint)
    config.files.tokens = str(demo.tokens)
    config.validation.wavs = [str(w) for w in demo.test_wavs]
    config.output.dir = str(tmp_path / "out")
    return config


async def test_a_failing_step_shows_its_hint_and_fix_goes_back(tmp_path):
    app = WizardApp(config=failing_recipe(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await review_ready(pilot)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: run_done(app), timeout=60)
        await pilot.pause(0.3)
        assert app.run_model.status == "failed"
        assert app.run_model.by_id["export"].status == "failed"
        failure = text(app, "#failure")
        assert "exited with code 1" in failure
        assert "No module named 'k2'" in failure
        assert "hint: the export needs icefall's Python environment" in failure
        assert "logs/03-export.log" in failure
        assert "on Files" in failure and "--python" not in failure  # the wizard's way out, not the CLI's flag
        await pilot.press("x")  # fix and resume: a missing module is about the model files / Python
        await pilot.pause()
        assert isinstance(app.screen, FilesScreen)
        assert app.resume_next
        assert app.focused is app.screen.query_one("#f-python")  # the field the hint (kind PYTHON_ENV) is about
        await go_to(pilot, ReviewScreen)
        assert str(app.screen.query_one("#next").label) == "Resume run"


async def test_a_plan_problem_is_shown_at_review_and_run_is_disabled(tmp_path):
    config = demo_config("lstm")
    config.output.dir = str(tmp_path / "out")
    config.tools.pnnx = str(tmp_path / "no-such-pnnx")
    app = WizardApp(config=config)
    async with app.run_test(size=SIZE) as pilot:
        await review_ready(pilot)
        assert app.screen.query_one("#next").disabled
        assert "tools.pnnx" in text(app, "#problems") and "not found" in text(app, "#problems")
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen) and app.runner is None
        assert not (tmp_path / "out").exists()


async def test_review_saves_config_and_script(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, ReviewScreen)
        app.screen.query_one("#config-path").value = str(tmp_path / "saved.toml")
        app.screen.query_one("#script-path").value = str(tmp_path / "saved.sh")
        await pilot.press("ctrl+s")
        await pilot.press("ctrl+e")
        await pilot.pause()
    from core.pipeline.config import load_config
    assert load_config(tmp_path / "saved.toml").arch == "zipformer"
    assert (tmp_path / "saved.sh").read_text().startswith("#!/usr/bin/env bash")
    assert not (tmp_path / "out").exists()


async def test_open_config_starts_at_review_and_back_walks_the_steps(tmp_path):
    config = demo_config("conv-emformer")
    config.output.dir = str(tmp_path / "out")
    config.save(tmp_path / "wizard.toml")
    app = make_app(config_path=str(tmp_path / "wizard.toml"))
    async with app.run_test(size=SIZE) as pilot:
        await review_ready(pilot)
        assert text(app, "#meta-line") == expected_meta_line("conv-emformer")
        for screen_type in (QuantScreen, HyperScreen, ArchScreen, FilesScreen):
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, screen_type)


async def test_command_palette_lists_the_main_actions(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, ReviewScreen)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Run", "Save config", "Save script", "Back"} <= set(titles)


# -- the command line -------------------------------------------------------------------------

def test_bare_command_without_a_tty_prints_help():
    import subprocess
    r = subprocess.run([sys.executable, "-c", "import sys; from tui.cli.main import main; sys.exit(main([]))"],
                       cwd=REPO, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "usage: sherpa-ncnn-wizard" in r.stdout
    assert "textual" not in r.stderr


def test_tui_help_does_not_import_textual():
    import subprocess
    r = subprocess.run([sys.executable, "-c", "import sys\nfrom tui.cli.main import main\n"
                        "try:\n    main(['tui', '--help'])\nexcept SystemExit:\n    pass\n"
                        "print('textual' in sys.modules)"],
                       cwd=REPO, capture_output=True, text=True)
    assert "--demo ARCH" in r.stdout and r.stdout.strip().endswith("False")


@pytest.mark.slow
async def test_quit_during_a_run_asks_then_cancels(tmp_path):
    config = demo_config("lstm")
    config.output.dir = str(tmp_path / "out")
    app = WizardApp(config=config)
    async with app.run_test(size=SIZE) as pilot:
        await review_ready(pilot)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.runner is not None and app.runner._procs, timeout=60)
        pid = next(iter(app.runner._procs)).pid
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.run_in_progress  # only asked so far
        await pilot.press("n")
        await pilot.pause()
        assert app.run_in_progress and not app.runner.cancelled
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: run_done(app), timeout=30)
        await pilot.pause(0.2)
    assert app.run_model.status == "cancelled"
    assert not process_alive(pid)


def test_run_model_batches_log_lines_per_step():
    config = demo_config("lstm")
    config.output.dir = "/tmp/sherpa-ncnn-wizard-unused"
    from core.pipeline.plan import build_plan
    from core.pipeline.events import LogLines as Lines
    from tui.wizard.app import LOG_KEEP_LINES, RunModel
    model = RunModel(build_plan(config, check_out_dir=False))
    for i in range(100):
        model.handle(Lines("export", tuple(f"{i}-{j}" for j in range(100))))
    assert model.version == 0  # log lines alone never redraw the step list
    lines = model.take_pending("export")
    assert len(lines) == 10_000 and lines[-1] == "99-99"
    assert model.take_pending("export") == []
    assert len(model.by_id["export"].lines) == LOG_KEEP_LINES


def test_summary_results_show_fp16_and_int8_side_by_side(tmp_path):
    import json
    from tui.wizard import logic
    (tmp_path / "summary.json").write_text(json.dumps({"sizes": [
        {"model": "joiner", "pt": 26000, "fp16": 8700, "fp32": 16900, "int8": 5100}], "files": ["a"]}))
    (tmp_path / "validation.json").write_text(json.dumps({
        "numeric": [], "ok": True,
        "decode": {"ok": True, "model": "fp16", "results": [{"wav": "/x/a.wav", "text": "HELLO"}]},
        "decode_int8": {"ok": True, "model": "int8", "results": [{"wav": "/x/a.wav", "text": "HELO"}]},
        "int8_similarity": [{"net": "joiner", "output": "out0", "mean_cosine": 0.995, "min_cosine": 0.98,
                             "samples": 10}]}))
    r = logic.read_results(tmp_path)
    assert r.sizes == [("joiner", "25.4 KB", "8.5 KB", "16.5 KB", "5.0 KB")]
    assert r.transcripts == [("a.wav", "HELLO", "HELO")]
    assert ("ok", "int8 joiner out0 vs fp32: cosine mean 0.9950 (worst 0.9800)") in [(c.status, c.text)
                                                                                   for c in r.checks]


async def test_detect_from_checkpoint_fills_the_form_and_marks_fields(tmp_path):
    """A 2-stack Zipformer checkpoint: detection sets the architecture and fills the form; edits are marked;
    a contradiction is refused at Review until the user confirms."""
    import subprocess
    import sys as _sys
    from core.pipeline.demo import DEMO_ROOT
    flags = ["--num-encoder-layers", "2,2", "--feedforward-dims", "64,64", "--nhead", "2,2", "--encoder-dims", "32,32",
             "--attention-dims", "16,16", "--encoder-unmasked-dims", "16,16", "--zipformer-downsampling-factors", "1,2",
             "--cnn-module-kernels", "7,7", "--decoder-dim", "32", "--joiner-dim", "32"]
    ckpt = tmp_path / "pretrained.pt"
    subprocess.run([_sys.executable, str(DEMO_ROOT / "make_demo_assets.py"), "checkpoint", "--arch", "zipformer",
                    "--tokens", str(demo_recipe("zipformer").tokens), "--out", str(ckpt), "--", *flags],
                   check=True, capture_output=True)
    app = make_app(demo="lstm", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, FilesScreen)
        app.screen.query_one("#f-checkpoint").value = str(ckpt)
        app.screen.query_one("#f-recipe").value = str(DEMO_ROOT / "icefall/egs/librispeech/ASR/"
                                                      "pruned_transducer_stateless7_streaming")
        await pilot.pause()
        app.screen.action_detect()
        await wait_for(pilot, lambda: app.detected is not None, timeout=60)
        assert "Streaming Zipformer" in text(app, "#detect-result")
        assert app.config.arch == "zipformer"
        await go_to(pilot, HyperScreen)
        screen = app.screen
        assert screen.query_one("#hp-num_encoder_layers").value == "2,2"
        assert "detected (weights)" in text(app, "#d-num_encoder_layers")
        assert "not in the weights" in text(app, "#d-decode_chunk_len")
        screen.query_one("#hp-encoder_dims").value = "48,48"
        await pilot.pause()
        assert "edited (checkpoint: 32,32)" in text(app, "#d-encoder_dims")
        assert not screen.query_one("#next").disabled, text(app, "#nav-note")
        await pilot.click("#next")
        await pilot.pause()
        await go_to(pilot, ReviewScreen)
        await review_ready(pilot)
        assert "checkpoint has 32" in text(app, "#problems")
        assert app.screen.query_one("#ignore-mismatch").display and app.screen.query_one("#next").disabled
        await pilot.click("#ignore-mismatch")
        await review_ready(pilot)
        assert app.config.files.ignore_checkpoint_mismatch
        assert not app.screen.query_one("#next").disabled


async def test_presets_fill_the_form(tmp_path):
    from core.model.presets import PRESETS
    app = make_app(demo="conv-emformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, HyperScreen)
        preset = next(p for p in PRESETS.values() if p.arch == "conv-emformer")
        app.screen.query_one("#preset").value = preset.name
        await pilot.pause()
        for flag, value in preset.flags.items():
            name = flag.lstrip("-").replace("-", "_")
            assert app.screen.query_one(f"#hp-{name}").value == value
        assert not app.screen.query_one("#next").disabled


def test_path_completion(tmp_path):
    from tui.wizard.logic import PathCompletion
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "pretrained.pt").write_text("x")
    assert PathCompletion.complete(str(tmp_path / "ex")) == str(tmp_path / "exp") + "/"
    assert PathCompletion.complete(str(tmp_path / "exp") + "/pre") == str(tmp_path / "exp" / "pretrained.pt")
    assert PathCompletion.complete(str(tmp_path / "nothing-like-this")) is None


async def test_recent_runs_are_listed_and_reopen_at_review(tmp_path):
    from core.pipeline.recent import record_run, recent_runs
    out = tmp_path / "a run"
    out.mkdir()
    config = demo_config("lstm")
    config.output.dir = str(out)
    config.save(out / "wizard.toml")
    record_run(out, "lstm", "ok")
    record_run(tmp_path / "gone", "zipformer", "failed")  # no wizard.toml: not listed
    assert [e["out"] for e in recent_runs()] == [str(out.resolve())]
    app = WizardApp(show_timings=False)
    async with app.run_test(size=SIZE) as pilot:
        assert "lstm" in str(app.screen.query_one("#recent-0").label)
        await pilot.click("#recent-0")
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen) and app.config.output.dir == str(out)


async def test_quantization_screen_offers_the_external_tools_when_found(tmp_path, monkeypatch):
    from tests.int8_tool_standins import install
    bindir = install(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    app = make_app(demo="lstm", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, QuantScreen)
        screen = app.screen
        backend = screen.query_one("#int8-backend")
        assert backend.disabled and backend.value == "builtin"  # nothing to choose before int8 is chosen
        screen.query_one("#q-int8").value = True
        await audio_checked(pilot)
        assert not backend.disabled
        backend.value = "external"
        await pilot.click("#next")
        await pilot.pause()
        await review_ready(pilot)
        commands = text(app, "#commands")
        assert str(bindir / "generate-int8-scale-table") in commands and str(bindir / "ncnn2int8") in commands
        assert app.config.calibration.backend == "external"


# -- "I already have ncnn files" -----------------------------------------------------------------

REAL = SHARED_REAL


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"the icefall-real fixtures are not at {REAL}")
async def test_existing_ncnn_files_flow_rewrites_adds_metadata_and_decodes(tmp_path):
    from tui.wizard.ncnn import NcnnDirScreen
    src = REAL / "lstm"
    app = make_app(out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NcnnDirScreen) and screen.query_one("#next").disabled
        screen.query_one("#ncnn-dir").value = str(tmp_path)  # not pnnx output
        await wait_for(pilot, lambda: not screen.pending(), timeout=30)
        await pilot.pause()
        assert "encoder_jit_trace-pnnx.ncnn.param not found" in text(app, "#c-ncnn-dir")
        screen.query_one("#ncnn-dir").value = str(src)
        screen.query_one("#ncnn-wavs").value = str(demo_recipe("lstm").test_wavs[0].parent)
        await wait_for(pilot, lambda: "rewrite:" in text(app, "#ncnn-found"), timeout=30)
        found = text(app, "#ncnn-found")
        assert "looks like a lstm encoder" in found and "reference outputs" in found
        assert "lengths-cast x1" in found  # what the rewrite step will do, before anything is written
        await go_to(pilot, ArchScreen)
        assert app.screen.query_one("#a-lstm").value  # preselected from the graph
        await go_to(pilot, HyperScreen)
        app.screen.query_one("#paste").value = " ".join((src / "export-flags.txt").read_text().split())
        await pilot.click("#fill")
        await pilot.pause()
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, QuantScreen), text(app, "#paste-result") + text(app, "#cross-errors")
        await go_to(pilot, ReviewScreen)
        assert app.screen.plan_state == "ok", text(app, "#problems")
        assert "after the rewrite" in text(app, "#header-change") and "with the metadata line" in text(
            app, "#header-change")
        assert "Copy the pnnx output" in text(app, "#commands") and not (tmp_path / "out").exists()
        await pilot.press("enter")  # Run
        await pilot.pause()
        await wait_for(pilot, lambda: run_done(app))
        assert app.run_model.status == "ok", [(s.id, s.status) for s in app.run_model.steps]
    assert "SherpaMetaData" in (tmp_path / "out" / "encoder_jit_trace-pnnx.ncnn.param").read_text()
    assert "from_ncnn" in (tmp_path / "out" / "wizard.toml").read_text()


async def test_calibration_audio_at_another_rate_needs_the_resample_tick(tmp_path):
    import soxr

    from core.common.audio import read_wav
    from core.pipeline.calibration_audio import float_wav_bytes
    odd = tmp_path / "cd.wav"
    odd.write_bytes(float_wav_bytes(soxr.resample(read_wav(demo_recipe("lstm").test_wavs[0]).samples, 16000, 44100),
                                    44100))
    app = make_app(demo="lstm", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await go_to(pilot, QuantScreen)
        screen = app.screen
        screen.query_one("#q-int8").value = True
        screen.query_one("#cal-wavs").value = str(odd)
        await audio_checked(pilot)
        assert "44100 Hz" in text(app, "#cal-check") and screen.query_one("#next").disabled
        screen.query_one("#resample").value = True
        await audio_checked(pilot)
        assert "resampled to 16 kHz when the run starts" in text(app, "#cal-check")
        assert not screen.query_one("#next").disabled
        await pilot.click("#next")
        await pilot.pause()
        await review_ready(pilot)
        assert "Resample calibration audio to 16 kHz" in text(app, "#commands")
        assert app.config.calibration.resample


# -- issue 15: the wizard walked as a new user at 80x24 ---------------------------------------------

SMALL = (80, 24)


def notes(app) -> str:
    return "\n".join(n.message for n in app._notifications)


async def checks_done(pilot) -> None:
    await wait_for(pilot, lambda: not pilot.app.screen.pending(), timeout=60)
    await pilot.pause()


async def test_my_model_focuses_the_first_field_and_junk_files_are_refused(tmp_path):
    """`m` puts the cursor in the first field; a junk .pt and a junk bpe.model get ✗ (checked in a worker),
    not "✓ ok"; fixing the file on disk and checking again turns the field ✓ (as fix-and-resume does)."""
    config = demo_config("zipformer")
    junk_pt, junk_bpe = tmp_path / "epoch-9.pt", tmp_path / "bpe.model"
    junk_pt.write_text("not a checkpoint\n")
    junk_bpe.write_text("not a sentencepiece model\n")
    app = make_app(out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, FilesScreen)
        assert app.focused is app.screen.query_one("#f-recipe")
        await pilot.press(*"abc")
        assert app.screen.query_one("#f-recipe").value == "abc"
        app.screen.query_one("#f-recipe").value = config.files.recipe
        app.screen.query_one("#f-checkpoint").value = str(junk_pt)
        app.screen.query_one("#f-tokens").value = str(junk_bpe)
        await checks_done(pilot)
        assert text(app, "#c-checkpoint").startswith("✗") and "not a torch checkpoint" in text(app, "#c-checkpoint")
        assert text(app, "#c-tokens").startswith("✗") and "sentencepiece" in text(app, "#c-tokens")
        assert app.screen.query_one("#next").disabled
        import shutil
        shutil.copy(config.files.checkpoint, junk_pt)  # the user fixes the file: its check is not cached
        app.screen.refresh_state()
        await checks_done(pilot)
        assert text(app, "#c-checkpoint").startswith("✓"), text(app, "#c-checkpoint")


async def test_ctrl_d_detects_while_a_field_has_focus(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        field = app.screen.query_one("#f-checkpoint")
        field.focus()
        field.cursor_position = 0
        before = field.value
        await pilot.press("ctrl+d")
        await wait_for(pilot, lambda: "reading" not in text(app, "#detect-result") and text(app, "#detect-result"),
                       timeout=60)
        assert field.value == before  # not a deleted character
        assert app.detected is not None and app.detected.ok


@pytest.mark.parametrize("arch", ["zipformer", "conv-emformer"])
async def test_review_metadata_table_fits_80_columns_and_each_row_is_readable_in_full(tmp_path, arch):
    """No sideways scrolling at 80x24: long "from" texts are cut with "…", and the highlighted row is shown in
    full under the table; a wider terminal gets the whole texts back."""
    config = demo_config(arch)
    config.output.dir = str(tmp_path / "out")
    app = WizardApp(config=config, show_timings=False)
    async with app.run_test(size=SMALL) as pilot:
        await review_ready(pilot)
        table = app.screen.query_one("#meta-table")
        assert table.virtual_size.width <= table.size.width <= SMALL[0]
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        full = app.screen.meta_rows
        assert [r[0] for r in rows] == [r[0] for r in full]  # the keys are never cut
        cut = [i for i, r in enumerate(rows) if r != list(full[i])]
        assert all(rows[i][2].endswith("…") for i in cut)
        if arch == "conv-emformer":  # its texts fit as they are
            assert not cut
            return
        assert cut
        table.focus()
        table.move_cursor(row=cut[0])
        await pilot.pause()
        key, value, source = full[cut[0]]
        assert f"{key}={value}: {source}" in text(app, "#meta-detail")
        await pilot.resize_terminal(160, 40)
        await pilot.pause(0.2)
        assert [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)] == [list(r) for r in full]


async def test_review_keys_work_in_a_path_field_and_saving_is_notified(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        await go_to(pilot, ReviewScreen)
        await review_ready(pilot)
        path = app.screen.query_one("#script-path")
        path.value = str(tmp_path / "my-export.sh")
        path.focus()
        await pilot.press("ctrl+e")
        await pilot.pause()
        assert (tmp_path / "my-export.sh").is_file()
        app.screen.query_one("#config-path").value = str(tmp_path / "my.toml")
        app.screen.query_one("#config-path").focus()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert (tmp_path / "my.toml").is_file()
        assert "script saved to" in notes(app) and "config saved to" in notes(app)


async def test_no_invisible_tab_stop_in_the_steps(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        for screen in (FilesScreen, HyperScreen):
            await go_to(pilot, screen)
            chain = app.screen.focus_chain
            assert not [w for w in chain if w.has_class("body")], chain  # the scrolling body is no Tab stop
        assert app.screen.focus_chain[0] is app.screen.query_one("#preset")


async def test_a_bad_toml_on_start_is_a_notification(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("arch = [\n")
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        app.screen.query_one("#toml").value = str(bad)
        app.screen.query_one("#toml").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert "bad.toml" in notes(app)
        app.screen.query_one("#toml").value = str(tmp_path / "missing.toml")
        await pilot.press("enter")
        await pilot.pause()
        assert "missing.toml" in notes(app)


async def test_cross_field_errors_are_notified_and_keys_labelled_as_in_the_line(tmp_path):
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        await go_to(pilot, HyperScreen)
        assert "key -23316" in text(app, "#d-num_encoder_layers"), text(app, "#d-num_encoder_layers")
        assert "key 16" not in text(app, "#d-num_encoder_layers")
        app.screen.query_one("#hp-num_encoder_layers").value = "2,4"  # 2 stacks, the others 3: cross-field
        await pilot.pause()
        assert text(app, "#cross-errors")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert text(app, "#cross-errors").splitlines()[0].removeprefix("✗ ")[:30] in notes(app)


async def test_after_a_run_n_starts_over_and_the_palette_has_new_run(tmp_path):
    from core.pipeline.events import RunFinished, StepFinished, StepStarted
    from textual.app import SystemCommand  # noqa: F401
    from tui.wizard.app import RunModel
    config = demo_config("lstm")
    config.output.dir = str(tmp_path / "out")
    app = WizardApp(config=config, show_timings=False)
    async with app.run_test(size=SMALL) as pilot:
        await review_ready(pilot)
        model = app.run_model = RunModel(app.screen.planned)
        for s in model.steps:
            model.handle(StepStarted(s.id, s.index, len(model.steps), s.title, s.command))
            model.handle(StepFinished(s.id, "ok", 1.0))
        model.handle(RunFinished("ok", 9.0, str(model.out_dir)))
        await app.push_screen(RunScreen())
        await pilot.pause()
        assert "New run" in [c.title for c in app.get_system_commands(app.screen)]
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, StartScreen) and len(app.screen_stack) == 2


async def test_new_run_is_not_offered_while_a_run_goes(tmp_path):
    import asyncio
    app = make_app(demo="lstm", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        assert app.check_action("new_run", ())
        release = asyncio.Event()
        app.run_worker_ = app.run_worker(release.wait(), group="pipeline")
        await pilot.pause()
        assert app.check_action("new_run", ()) is None  # hidden from the footer: n would only say "cancel it first"
        release.set()
        await app.run_worker_.wait()
        await pilot.pause()
        assert app.check_action("new_run", ())


def test_failure_panel_puts_hint_and_action_before_the_log(tmp_path):
    from core.pipeline.events import RunFinished, StepFinished, StepStarted
    from tui.wizard.app import RunModel
    from tui.wizard.run import RunScreen as Screen_
    config = demo_config("lstm")
    config.output.dir = str(tmp_path / "out")
    app = WizardApp(config=config, show_timings=False)

    async def walk():
        async with app.run_test(size=SMALL) as pilot:
            model = app.run_model = RunModel(app.plan())
            s = model.steps[0]
            model.handle(StepStarted(s.id, s.index, len(model.steps), s.title, s.command))
            model.handle(StepFinished(s.id, "failed", 1.0, error="exited with code 1", hint="set python = ...",
                                      tail=tuple(f"traceback line {i}" for i in range(40))))
            model.handle(RunFinished("failed", 2.0, str(model.out_dir)))
            await app.push_screen(Screen_())
            await pilot.pause()
            from textual.geometry import Region
            panel = app.screen.query_one("#failure")
            shown = panel.render_lines(Region(0, 0, panel.size.width, panel.size.height))  # what fits on screen
            visible = "\n".join(line.text for line in shown)
            assert "hint: set python" in visible and "x: fix and resume" in visible, visible
            assert "full log:" in text(app, "#log-path") and "logs" in text(app, "#log-path")
    import asyncio
    asyncio.run(walk())


def test_plan_problems_speak_of_the_wizard_not_the_cli(tmp_path):
    from core.common.problems import Problem, ProblemKind
    from tui.wizard import checks
    text_ = checks.in_wizard_words(Problem(  # as core.pipeline.plan.check_checkpoint words a mismatch
        ProblemKind.CHECKPOINT_MISMATCH, "--decode-chunk-len 32 but the checkpoint says 64", key="hyperparameters",
        how=" (fix it, or set files.ignore_checkpoint_mismatch / --ignore-checkpoint-mismatch to run anyway)"))
    assert "Run anyway" in text_ and "--ignore" not in text_ and "files.ignore" not in text_


def test_review_header_ignores_an_earlier_run_of_another_model(tmp_path):
    from tui.wizard import checks
    out = tmp_path / "out"
    (out / "work" / "pnnx").mkdir(parents=True)
    (out / "work" / "pnnx" / "encoder_jit_trace-pnnx.ncnn.param").write_text("7767517\n1493 1842\n")
    other = demo_config("lstm")
    other.files.checkpoint = str(tmp_path / "another.pt")
    other.save(out / "wizard.toml")
    assert "1493" not in checks.header_change(demo_config("lstm"), out)
    assert "1493 1842" in checks.header_change(other, out)


async def test_the_log_pane_shows_a_step_at_once_before_its_child_prints(tmp_path):
    """A child that prints nothing for a while (validation importing torch): the pane is not empty meanwhile."""
    from types import SimpleNamespace

    from core.pipeline.runner import Plan, Runner, Step
    from tui.wizard.app import RunModel
    go = tmp_path / "go"
    child = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\nprint('child line', flush=True)"
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    plan = Plan([Step("quiet", "A quiet child", argv=[sys.executable, "-c", child])], out)
    app = WizardApp(show_timings=False)
    async with app.run_test(size=SMALL) as pilot:
        app.run_model = RunModel(SimpleNamespace(out_dir=out, plan=plan))
        await app.push_screen(RunScreen())
        app.runner = Runner(plan, app.on_core_event)
        app.run_worker_ = app.run_worker(app.runner.run(), group="pipeline", exit_on_error=False)
        log = app.screen.query_one("#log")
        await wait_for(pilot, lambda: log.line_count > 0, timeout=30)
        assert not go.exists() and log.lines[0].startswith("$ ") and "A quiet child" not in log.lines[0]
        go.touch()
        await wait_for(pilot, lambda: run_done(app), timeout=30)
        await pilot.pause(0.2)
        assert log.lines[-1] == "child line"


@pytest.mark.skipif(not (REAL / "conv-emformer").is_dir(), reason="the shared icefall fixtures are not here")
async def test_a_misconverted_encoder_blocks_at_files_until_its_traced_encoder_is_there(tmp_path):
    from tui.wizard.ncnn import NcnnDirScreen
    src = tmp_path / "conv-emformer"
    src.mkdir()
    for f in (REAL / "conv-emformer").iterdir():
        (src / f.name).symlink_to(f)
    app = make_app(out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("n")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NcnnDirScreen)
        screen.query_one("#ncnn-dir").value = str(src)
        await wait_for(pilot, lambda: not screen.pending(), timeout=60)
        await pilot.pause()
        assert "pnnx mis-converted" in text(app, "#c-ncnn-dir") and "traced" in text(app, "#c-ncnn-dir")
        assert screen.query_one("#next").disabled
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, NcnnDirScreen)
        kit = REAL.parent / "icefall-kit" / "conv-emformer-4layer" / "traced"
        (src / "traced").symlink_to(kit)  # the traced encoder: the run converts it again
        screen.refresh_state()
        await wait_for(pilot, lambda: not screen.pending(), timeout=60)
        await pilot.pause()
        assert not screen.query_one("#next").disabled, text(app, "#c-ncnn-dir")


@pytest.mark.skipif(not (REAL / "conv-emformer").is_dir(), reason="the shared icefall fixtures are not here")
async def test_the_traced_modules_field_unblocks_a_misconverted_encoder_and_reaches_the_plan(tmp_path):
    from core.pipeline.from_ncnn import build_from_ncnn_config
    from tui.wizard.ncnn import NcnnDirScreen
    kit = REAL.parent / "icefall-kit" / "conv-emformer-4layer" / "traced"
    app = make_app(out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("n")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NcnnDirScreen)
        screen.query_one("#ncnn-dir").value = str(REAL / "conv-emformer")
        await wait_for(pilot, lambda: not screen.pending(), timeout=60)
        await pilot.pause()
        assert screen.query_one("#next").disabled and "traced modules" in text(app, "#c-ncnn-dir")
        screen.query_one("#ncnn-traced").value = str(tmp_path / "nowhere")
        await pilot.pause()
        assert "not a folder" in text(app, "#c-ncnn-traced")
        screen.query_one("#ncnn-traced").value = str(kit)
        await wait_for(pilot, lambda: not screen.pending(), timeout=60)
        await pilot.pause()
        assert not screen.query_one("#next").disabled, text(app, "#c-ncnn-dir")
        screen.save()
        assert app.config.files.traced_dir == str(kit.resolve())
    run = build_from_ncnn_config(app.config, check_out_dir=False)
    assert run.traced_dir == kit.resolve()


def test_cli_run_ends_with_next_steps_and_the_int8_files(tmp_path):
    from rich.console import Console

    from tui.cli.run import _print_results
    from tui.wizard import logic
    out = tmp_path / "out"
    out.mkdir()
    for name in ("encoder_jit_trace-pnnx.ncnn.int8.param", "README.md"):
        (out / name).write_text("x")
    console = Console(record=True, width=80, soft_wrap=True)  # as stdout_console()
    _print_results(console, out, "ok")
    printed = console.export_text()
    assert "sherpa-ncnn-wizard doctor" in printed and f"validate {out} --wav" in printed
    assert f"tui --config {out / 'wizard.toml'}" in printed
    assert "encoder_jit_trace-pnnx.ncnn.int8.param" in printed and "joiner_jit_trace-pnnx.ncnn.int8.bin" in printed
    snippet = logic.sherpa_snippet(out)  # the wizard's summary: both sets
    assert "joiner_jit_trace-pnnx.ncnn.int8.param" in snippet and "joiner_jit_trace-pnnx.ncnn.param" in snippet
    console = Console(record=True, width=80, soft_wrap=True)  # as stdout_console()
    _print_results(console, out, "failed")
    assert "next steps" not in console.export_text()


async def test_slow_file_checks_never_block_typing(tmp_path, monkeypatch):
    """A check that takes seconds (a big checkpoint, a pnnx directory) runs in a worker: keys are handled
    meanwhile, Next waits for the verdict."""
    import threading

    from tui.wizard import checks, logic
    release = threading.Event()

    def slow(value: str) -> logic.FieldCheck:
        release.wait(30)
        return logic.FieldCheck(True, "ok (slow)")
    monkeypatch.setitem(checks.SLOW_CHECKS, "checkpoint", slow)
    app = make_app(demo="zipformer", out_dir=str(tmp_path / "out"))
    async with app.run_test(size=SMALL) as pilot:
        field = app.screen.query_one("#f-out")
        field.focus()
        field.cursor_position = len(field.value)
        await pilot.press("x", "y")
        assert field.value.endswith("xy")  # handled while the checkpoint check is still blocked
        assert "checking" in text(app, "#c-checkpoint") and app.screen.query_one("#next").disabled
        await pilot.press("enter")  # Next is remembered ...
        assert isinstance(app.screen, FilesScreen)
        release.set()
        await wait_for(pilot, lambda: isinstance(app.screen, ArchScreen), timeout=30)  # ... and done after


@pytest.mark.slow
def test_ncnn_registration_lines_of_calibrate_stay_in_its_log(tmp_path, capfd):
    """ncnn prints "overwrite built-in layer type Convolution" (on fd 2, from C++) whenever a layer type is
    registered over a built-in one. Calibration used to (its weight readers) and the lines had to stay in the
    step's log; since it reads weight scales through ncnn's own ModelBin (core.int8.weight_scales) it registers
    nothing, so none are printed at all. With the real calibrate child on the LSTM demo: the log pane shows the
    step's log line for line, and no such line reaches the log, a progress note (the CLI's progress line, the
    wizard's progress label), the CLI's output, or this process's own stdout/stderr."""
    import asyncio
    import io

    from rich.console import Console

    from core.pipeline.events import Progress, StepStarted
    from core.pipeline.plan import build_plan
    from core.pipeline.runner import Runner
    from tui.cli.run import PlainRenderer, RichRenderer
    from tui.wizard.app import RunModel
    config = demo_config("lstm")
    config.output.int8 = True
    config.output.dir = str(tmp_path / "out")
    planned = build_plan(config)
    ids = [s.id for s in planned.plan.steps]
    planned.plan.steps = planned.plan.steps[:ids.index("calibrate") + 1]  # nothing after it is needed here
    model = RunModel(planned)
    plain, rich = io.StringIO(), io.StringIO()
    renderers = [PlainRenderer(Console(file=plain, width=200)),
                 RichRenderer(Console(file=rich, width=200, force_terminal=True))]
    events, notes = [], []

    def on_event(event) -> None:
        events.append(event)
        for r in renderers:
            r.handle(event)
        model.handle(event)
        calibrate = model.by_id["calibrate"]
        notes.append(calibrate.note)  # what the wizard's progress label shows
    try:
        assert asyncio.run(Runner(planned.plan, on_event).run()) == "ok"
    finally:
        for r in renderers:
            r.close()
    index = next(e.index for e in events if isinstance(e, StepStarted) and e.step == "calibrate")
    log = (tmp_path / "out" / "logs" / f"{index:02d}-calibrate.log").read_text().splitlines()
    assert not [line for line in log if "overwrite built-in layer type" in line]
    assert list(model.by_id["calibrate"].lines)[-len(log):] == log  # the pane: the log, line for line
    progress = [e.note for e in events if isinstance(e, Progress) and e.step == "calibrate"]
    assert progress and not any("overwrite" in n for n in progress + notes)
    assert "overwrite" not in plain.getvalue() and "overwrite" not in rich.getvalue()
    out, err = capfd.readouterr()
    assert "overwrite" not in out + err


async def test_run_progress_label_is_one_line_cut_with_an_ellipsis_at_80_columns(tmp_path):
    """A long step title and note (a calibration wav's path) stay on the label's one line, ending in "…"."""
    from core.pipeline.events import Progress, StepStarted
    from tui.wizard.app import RunModel
    config = demo_config("lstm")
    config.output.dir = str(tmp_path / "out")
    app = WizardApp(config=config, show_timings=False)
    async with app.run_test(size=SMALL) as pilot:
        await review_ready(pilot)
        app.run_model = model = RunModel(app.plan())
        step = model.steps[3]
        model.handle(StepStarted(step.id, step.index, len(model.steps), step.title))
        model.handle(Progress(step.id, 1, 4, "Processing " + "/very/long/path" * 8 + "/cal-0.wav (ETA 0 s)"))
        await app.push_screen(RunScreen())
        await pilot.pause(0.3)
        label = app.screen.query_one("#progress-label")
        shown = str(label.render())
        assert "\n" not in shown and shown.startswith(f"{step.index}. {step.title}: Processing ")
        lines = label.render_lines(label.region.reset_offset)  # what the one row of the label shows
        assert len(lines) == 1 and "".join(s.text for s in lines[0]).rstrip().endswith("…")


def test_a_background_step_beside_the_current_one_in_the_wizard_and_the_cli():
    import io

    from rich.console import Console

    from core.pipeline.events import RunFinished, StepFinished, StepStarted
    from core.pipeline.plan import build_plan
    from tui.cli.run import PlainRenderer, RichRenderer
    from tui.wizard.app import RunModel
    config = demo_config("lstm")
    config.output.int8 = True
    config.output.dir = "/tmp/sherpa-ncnn-wizard-unused"
    model = RunModel(build_plan(config, check_out_dir=False))
    plain, rich = io.StringIO(), io.StringIO()
    renderers = [PlainRenderer(Console(file=plain, width=200)),
                 RichRenderer(Console(file=rich, width=200, force_terminal=True))]
    ids = [s.id for s in model.steps]
    bg, fg = ids.index("validate") + 1, ids.index("calibrate") + 1
    events = [StepStarted("validate", bg, len(ids), "Validate", None, True),
              StepStarted("calibrate", fg, len(ids), "Calibrate")]
    for e in events:
        model.handle(e)
        for r in renderers:
            r.handle(e)
    assert model.running.id == "calibrate" and model.by_id["validate"].status == "running"  # the pane follows it
    assert model.by_id["validate"].background and not model.by_id["calibrate"].background
    assert len(renderers[1].tasks) == 2  # a bar per running step
    for e in (StepFinished("calibrate", "ok", 1.0), StepFinished("validate", "ok", 2.0), RunFinished("ok", 3.0, "x")):
        model.handle(e)
        for r in renderers:
            r.handle(e)
    assert model.running is None and renderers[1].tasks == {}
    assert f"[{bg}/{len(ids)}] Validate ... (in the background, beside the next steps)" in plain.getvalue()
    assert f"[{bg}/{len(ids)}] ✓ validate ok (2.0 s)" in plain.getvalue()
