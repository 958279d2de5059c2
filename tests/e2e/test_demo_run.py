"""The whole pipeline on the bundled demos: real export, real pnnx, real sherpa-ncnn decoding."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from core.pipeline.config import load_config
from core.pipeline.demo import DEMO_ROOT, demo_config, demo_recipe
from core.model.metadata import read_metadata
from core.ncnn.param import load_param

pytestmark = pytest.mark.slow

ARCHS = ("zipformer", "conv-emformer", "lstm")


def meta_line_from_cli(cli_json, param, arch, flags):
    code, r = cli_json("meta", param, "--arch", arch, *flags)
    assert code == 0, r["errors"]
    return r["line"]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Run each demo once through the CLI (in-process), into a path with spaces."""
    from tui.cli.main import main
    runs = {}
    for arch in ARCHS:
        out = tmp_path_factory.mktemp("runs") / f"demo {arch}"
        code = main(["run", "--demo", arch, "--out", str(out)])
        runs[arch] = (code, out)
    return runs


@pytest.mark.parametrize("arch", ARCHS)
def test_demo_run_produces_a_validated_sherpa_ncnn_model(demo_runs, cli_json, arch):
    code, out = demo_runs[arch]
    assert code == 0
    for net in ("encoder", "decoder", "joiner"):
        for ext in ("param", "bin"):
            assert (out / f"{net}_jit_trace-pnnx.ncnn.{ext}").stat().st_size > 0
    encoder = out / "encoder_jit_trace-pnnx.ncnn.param"
    flags = demo_recipe(arch).flags
    # the line in the produced file is exactly what `meta` previews for the demo's flags
    raw = out / "work" / "pnnx" / "encoder_jit_trace-pnnx.ncnn.param"
    expected = meta_line_from_cli(cli_json, raw, arch, flags)
    model = load_param(encoder).model
    assert model.ok and model.lines[2].rstrip("\n") == expected
    assert read_metadata(model)[0] == {"zipformer": 2, "conv-emformer": 1, "lstm": 3}[arch]
    code, doctor = cli_json("doctor", out)
    assert code == 0 and doctor["healthy"], doctor["findings"]
    validation = json.loads((out / "validation.json").read_text())
    assert validation["ok"]
    assert {r["net"] for r in validation["numeric"]} == {"encoder", "decoder", "joiner"}
    assert all(r["ok"] for r in validation["numeric"])
    decoded = validation["decode"]
    assert decoded["ok"] and len(decoded["results"]) == len(demo_recipe(arch).test_wavs)
    # the demo models are trained: sherpa-ncnn recognises the held-out sentences (WER from the transcripts)
    assert all(r["reference"] == demo_recipe(arch).transcripts[r["wav"]] for r in decoded["results"])
    assert sum(r["wer"] for r in decoded["results"]) / len(decoded["results"]) <= 0.10, decoded["results"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["arch"] == arch
    assert manifest["tools"]["pnnx"]["version"] == "20260526"
    assert [s["status"] for s in manifest["steps"]] == ["ok"] * len(manifest["steps"])
    assert manifest["summary"]["sizes"][0]["model"] == "checkpoint"
    assert (out / "export.sh").read_text().startswith("#!/usr/bin/env bash")
    assert load_config(out / "wizard.toml").arch == arch
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs[0] == "01-prepare.log" and any(name.endswith("-export.log") for name in logs)
    assert "Exporting encoder" in next((out / "logs").glob("*-export.log")).read_text()
    assert (out / "tokens.txt").read_text().startswith("<blk> 0\n")
    # the user's (here: the demo's) checkpoint directory was only read
    assert sorted(p.name for p in demo_recipe(arch).checkpoint.parent.iterdir()) == ["pretrained.pt"]


def test_resume_of_a_finished_demo_run_skips_everything(demo_runs, capsys):
    from tui.cli.main import main
    code, out = demo_runs["lstm"]
    capsys.readouterr()
    assert main(["run", "--demo", "lstm", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    total = int(re.search(r"\[1/(\d+)\]", printed).group(1))
    assert total >= 10 and printed.count("skipped (unchanged)") == total  # every step, the rewrite step included


def test_changed_hyperparameters_give_a_different_correct_model(tmp_path, cli_json):
    """A 2-stack Zipformer with a shorter chunk, from a copy of the recipe under a path with spaces."""
    icefall = tmp_path / "my icefall copy"
    shutil.copytree(DEMO_ROOT / "icefall", icefall)
    config = demo_config("zipformer")
    flags = {"num-encoder-layers": "2,2", "feedforward-dims": "64,64", "nhead": "2,2", "encoder-dims": "32,32",
             "attention-dims": "16,16", "encoder-unmasked-dims": "16,16", "zipformer-downsampling-factors": "1,2",
             "cnn-module-kernels": "7,7", "decoder-dim": "32", "joiner-dim": "32", "decode-chunk-len": "16",
             "num-left-chunks": "4"}
    config.hyperparameters = flags
    argv_flags = [x for k, v in flags.items() for x in ("--" + k, v)]
    ckpt = tmp_path / "my model" / "pretrained.pt"
    ckpt.parent.mkdir()
    subprocess.run([sys.executable, str(DEMO_ROOT / "make_demo_assets.py"), "checkpoint", "--arch", "zipformer",
                    "--tokens", str(demo_recipe("zipformer").tokens), "--out", str(ckpt), "--", *argv_flags],
                   check=True, capture_output=True)
    config.files.recipe = str(icefall / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming")
    config.files.icefall_root = str(icefall)
    config.files.checkpoint = str(ckpt)
    config.output.dir = str(tmp_path / "out dir")
    cfg = tmp_path / "wizard.toml"
    config.save(cfg)
    from tui.cli.main import main
    assert main(["run", "--config", str(cfg)]) == 0
    out = tmp_path / "out dir"
    line = load_param(out / "encoder_jit_trace-pnnx.ncnn.param").model.lines[2].rstrip("\n")
    assert "1=16" in line and "-23316=2,2,2" in line and "-23319=2,1,2" in line
    assert line == meta_line_from_cli(cli_json, out / "work/pnnx/encoder_jit_trace-pnnx.ncnn.param", "zipformer",
                                      argv_flags)
    assert len(load_param(out / "encoder_jit_trace-pnnx.ncnn.param").model.input_names) == 15
    validation = json.loads((out / "validation.json").read_text())
    assert validation["ok"] and validation["decode"]["ok"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    from tui.cli.main import main
    out = tmp_path / "never"
    script = tmp_path / "plan.sh"
    assert main(["run", "--demo", "conv-emformer", "--out", str(out), "--dry-run", "--script", str(script)]) == 0
    printed = capsys.readouterr().out
    assert "export-for-ncnn.py" in printed and "ncnnparam=" in printed and "--memory-size 4" in printed
    assert not out.exists()
    assert script.read_text().startswith("#!/usr/bin/env bash") and script.stat().st_mode & 0o100


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_demo_run_quantizes_calibrates_and_decodes(tmp_path, capsys, arch):
    from tui.cli.main import main
    out = tmp_path / "int8 out"
    assert main(["run", "--demo", arch, "--out", str(out), "--int8"]) == 0
    for net in ("encoder", "joiner"):
        assert (out / f"{net}_jit_trace-pnnx.ncnn.int8.param").read_text().count(" 8=2") >= 1
        assert (out / f"{net}-scale-table.txt").read_text().strip()
    assert "SherpaMetaData" in (out / "encoder_jit_trace-pnnx.ncnn.int8.param").read_text()
    validation = json.loads((out / "validation.json").read_text())
    assert validation["ok"] and validation["decode_int8"]["ok"]
    results = validation["decode_int8"]["results"]
    assert len(results) == len(demo_recipe(arch).test_wavs)
    assert sum(r["wer"] for r in results) / len(results) <= 0.15, results
    assert all(s["mean_cosine"] >= 0.99 for s in validation["int8_similarity"])
    manifest = json.loads((out / "manifest.json").read_text())
    steps = [s["id"] for s in manifest["steps"]]
    assert {"pnnx-encoder-fp32", "pnnx-joiner-fp32", "calibrate", "quantize"} <= set(steps)
    sizes = {r["model"]: r for r in manifest["summary"]["sizes"]}
    assert sizes["joiner"]["int8"] < sizes["joiner"]["fp32"] / 2
    printed = capsys.readouterr().out
    assert "sherpa-ncnn int8" in printed and "cosine mean" in printed


def test_int8_needs_usable_calibration_audio(tmp_path, capsys):
    from tui.cli.main import main
    import wave
    cfg = demo_config("lstm")
    cfg.output.int8 = True
    cfg.calibration.wavs = []
    cfg.output.dir = str(tmp_path / "o")
    path = tmp_path / "w.toml"
    cfg.save(path)
    assert main(["run", "--config", str(path)]) == 2
    assert "int8 needs calibration audio" in capsys.readouterr().err
    slow = tmp_path / "phone.wav"
    with wave.open(str(slow), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 8000)
    cfg.calibration.wavs = [str(slow)]
    cfg.save(path)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "phone.wav: 8000 Hz" in err and not (tmp_path / "o").exists()


def test_validate_command_on_a_finished_run(demo_runs, cli_json):
    code, out = demo_runs["conv-emformer"]
    code, report = cli_json("validate", out, "--wav", str(demo_recipe("lstm").test_wavs[0]))
    assert code == 0 and report["ok"] and len(report["decode"]["results"]) == 1


def test_manifest_records_the_metadata_checks(demo_runs):
    code, out = demo_runs["zipformer"]
    manifest = json.loads((out / "manifest.json").read_text())
    meta = manifest["summary"]["metadata"]
    assert meta["action"] == "insert" and {c["name"] for c in meta["checks"]} == {"inputs", "outputs",
                                                                                 "runtime-layers"}
    assert all(c["ok"] for c in meta["checks"])


def test_validate_explains_a_model_without_metadata(demo_runs, tmp_path, cli_json):
    code, out = demo_runs["lstm"]
    broken = tmp_path / "broken model"
    broken.mkdir()
    for f in out.iterdir():
        if f.is_file():
            shutil.copy(f, broken / f.name)
    param = broken / "encoder_jit_trace-pnnx.ncnn.param"
    lines = param.read_text().splitlines(keepends=True)
    n_layers, n_blobs = lines[1].split()
    param.write_text(lines[0] + f"{int(n_layers) - 1} {n_blobs}\n" + "".join(lines[3:]))
    code, report = cli_json("validate", broken, "--traced-dir", str(out / "work" / "exp"), "--arch", "lstm")
    assert code == 1 and report["ok"] is False
    error = report["decode"]["error"]
    assert "segmentation fault while loading the model" in error and "SherpaMetaData" in error


def test_the_validate_step_says_what_it_does_before_loading_torch(demo_runs):
    """The log pane is not empty for the seconds torch and the traced modules take to load."""
    code, out = demo_runs["lstm"]
    log = next((out / "logs").glob("*-validate.log")).read_text().splitlines()
    assert log[0].startswith("$ ") and log[1].startswith("validating ") and "loading torch" in log[1]
