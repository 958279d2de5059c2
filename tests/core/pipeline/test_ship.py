"""Know what you ship: speed in sherpa-ncnn, int8 per layer, model card, package, bench.py, hotwords."""
from __future__ import annotations

import json
import re
import os
import struct
import subprocess
import sys
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest

from core.pipeline.demo import DEMO_ROOT
from tests.paths import SHARED_REAL

LANG = DEMO_ROOT / "models" / "lstm" / "data" / "lang_bpe_500"
WAVS = sorted((DEMO_ROOT / "test_wavs").glob("*.wav"))
NETS = ("encoder", "decoder", "joiner")


def vocab() -> set[str]:
    return {l.split()[0] for l in (LANG / "tokens.txt").read_text(encoding="utf-8").splitlines() if l.strip()}


def write_pcm(path: Path, samples: np.ndarray, rate: int = 16000, width: int = 2, channels: int = 1) -> Path:
    scale = {1: 127, 2: 32767, 4: 2 ** 31 - 1}[width]
    x = np.round(np.clip(samples, -1, 1) * scale)
    data = ((x + 128).astype(np.uint8) if width == 1 else x.astype({2: "<i2", 4: "<i4"}[width])).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def write_float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
                     + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    return path


# -- hotwords -------------------------------------------------------------------------------------------------------

def test_hotwords_are_split_into_tokens_that_all_exist(tmp_path, cli):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blk> 0\n你 1\n好 2\n世 3\n界 4\nHE 5\nLL 6\n", encoding="utf-8")
    words = tmp_path / "words.txt"
    words.write_text("你好 世界\n# a comment\n\nHE LL :2.5\n", encoding="utf-8")
    out = tmp_path / "hotwords.txt"
    code, _, err = cli("hotwords", words, "--tokens", tokens, "--out", out)
    assert code == 0, err
    assert out.read_text(encoding="utf-8").splitlines() == ["你 好 世 界", "HE LL :2.5"]


def test_bpe_word_start_pieces_are_refused_because_sherpa_ncnn_cannot_read_them(tmp_path, cli):
    """sherpa-ncnn reads tokens.txt's leading ▁ as a space: '▁THE' is in tokens.txt but never found (it exits)."""
    words = tmp_path / "words.txt"
    words.write_text("THE NIGHT\n", encoding="utf-8")
    out = tmp_path / "hotwords.txt"
    code, _, err = cli("hotwords", words, "--bpe-model", LANG / "bpe.model", "--tokens", LANG / "tokens.txt",
                       "--out", out)
    assert code == 2 and not out.exists()
    import sentencepiece as spm
    pieces = spm.SentencePieceProcessor(model_file=str(LANG / "bpe.model")).encode("THE NIGHT", out_type=str)
    assert pieces[0] == "▁THE" and all(p in vocab() for p in pieces)
    assert "line 1: 'THE NIGHT' needs word-start token(s) '▁THE'" in err and "reads the leading ▁" in err


def test_a_hotword_with_an_unknown_token_is_named_by_line_and_nothing_is_written(tmp_path, cli):
    words = tmp_path / "words.txt"
    words.write_text("HELLO\nZZQXJ\nhello\nTHE :x\n", encoding="utf-8")
    out = tmp_path / "hotwords.txt"
    code, _, err = cli("hotwords", words, "--bpe-model", LANG / "bpe.model", "--tokens", LANG / "tokens.txt",
                       "--out", out)
    assert code == 2 and not out.exists()
    assert "line 1: 'HELLO' needs word-start token(s)" in err
    assert "line 2: 'ZZQXJ'" in err and "'J'" in err
    assert "line 3: 'hello'" in err and "upper case" in err
    assert "line 4: ':x' is not a score" in err
    assert "Traceback" not in err


def test_hotwords_without_a_bpe_model_split_characters(tmp_path):
    from core.model.hotwords import encode
    r = encode("你好 :3\n世界\n", {"你", "好", "世"})
    assert r.lines == ["你 好 :3"] and r.source_lines == [1]
    assert r.problems == ["line 2: '世界' needs token(s) '界' that tokens.txt does not have (sherpa-ncnn would exit "
                          "on it)"]


def test_hotwords_unusable_inputs_are_named(tmp_path, cli):
    words = tmp_path / "w.txt"
    words.write_text("HELLO\n")
    code, _, err = cli("hotwords", words, "--bpe-model", tmp_path / "nope.model", "--tokens", LANG / "tokens.txt")
    assert code == 2 and "nope.model: not found" in err
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    code, _, err = cli("hotwords", words, "--bpe-model", bad, "--tokens", LANG / "tokens.txt")
    assert code == 2 and "not a sentencepiece model" in err and "Traceback" not in err
    code, _, err = cli("hotwords", tmp_path / "missing.txt", "--tokens", LANG / "tokens.txt")
    assert code == 2 and "missing.txt: not found" in err


def test_existing_hotwords_file_is_checked_like_sherpa_ncnn_reads_it(tmp_path):
    from core.model.hotwords import check_hotwords_file
    f = tmp_path / "hw.txt"
    f.write_text("NE :1.5\nNE ZQ\nNE :abc\n▁THE\n", encoding="utf-8")
    assert check_hotwords_file(f, vocab())[:2] == ["line 2: token 'ZQ' is not in tokens.txt",
                                                   "line 3: ':abc' is not a score"]
    assert check_hotwords_file(f, vocab())[2].startswith("line 4: token '▁THE' starts with ▁")


# -- bench template: reading wavs with the standard library ---------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 4])
def test_bench_reads_pcm_wavs_like_the_tool_does(tmp_path, width):
    from core.common.audio import read_wav
    from core.validation.speed import bench_module
    x = np.sin(np.arange(1600) / 7.0).astype(np.float32) * 0.5
    path = write_pcm(tmp_path / f"w{width}.wav", x, width=width)
    got, rate = bench_module().read_wav(str(path))
    assert rate == 16000 and got.dtype == np.float32
    assert np.allclose(got, read_wav(path).samples, atol=1.5 / {1: 128, 2: 32768, 4: 2 ** 31}[width])


def test_bench_averages_channels(tmp_path):
    from core.validation.speed import bench_module
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1).reshape(-1)
    path = write_pcm(tmp_path / "s.wav", stereo, channels=2)
    got, _ = bench_module().read_wav(str(path))
    assert len(got) == 100 and np.allclose(got, 0.125, atol=1e-4)


def test_bench_refuses_bad_input_by_name(tmp_path, cli):
    code, _, err = cli("bench", tmp_path / "nowhere", "--wav", WAVS[0])
    assert code == 2 and "not a directory" in err
    model = tmp_path / "m"
    model.mkdir()
    code, _, err = cli("bench", model, "--wav", WAVS[0])
    assert code == 2 and "no sherpa-ncnn model here" in err and "encoder_jit_trace-pnnx.ncnn.param" in err
    (tmp_path / "x.wav").write_text("text")
    code, _, err = cli("bench", model, "--wav", tmp_path / "x.wav", "--threads", "0")
    assert code == 2 and "x.wav: cannot be read as a PCM wav" in err and "--threads 0" in err
    code, _, err = cli("bench", model)
    assert code == 2 and "no test wavs" in err


# -- int8 report ----------------------------------------------------------------------------------------------------

def _blob(tag: int, n: int) -> bytes:
    return struct.pack("<I", tag) + b"\0" * n


def test_precision_comes_from_the_blob_tags():
    from core.int8.report import FP16_TAG, INT8_TAG, precision_of
    from core.ncnn.bin_layout import Load
    data = _blob(INT8_TAG, 12) + _blob(FP16_TAG, 12) + _blob(0, 12) + b"\0" * 16
    int8, fp16, fp32 = Load(3, 0, 0, 16), Load(3, 0, 16, 32), Load(3, 0, 32, 48)
    raw = Load(4, 1, 48, 64)
    assert precision_of("InnerProduct", [int8, raw], data) == "int8"
    assert precision_of("Gemm", [int8, fp16], data) == "int8-weight-only"
    assert precision_of("LSTM", [int8, fp16, int8], data) == "int8-weight-only"
    assert precision_of("ConvolutionDepthWise1D", [fp16, raw], data) == "fp16"
    assert precision_of("LayerNorm", [raw, raw], data) == "fp32"
    assert precision_of("Convolution1D", [fp32], data) == "fp32"


def test_by_type_adds_layers_and_bytes():
    from core.int8.report import by_type, format_by_type
    rows = [{"net": "encoder", "layer": "a", "type": "InnerProduct", "precision": "int8", "bytes_before": 400,
             "bytes_fp16": 200, "bytes_after": 110},
            {"net": "joiner", "layer": "b", "type": "InnerProduct", "precision": "int8", "bytes_before": 40,
             "bytes_fp16": 20, "bytes_after": 15},
            {"net": "encoder", "layer": "c", "type": "Convolution1D", "precision": "fp16", "bytes_before": 800,
             "bytes_fp16": 400, "bytes_after": 400}]
    t = by_type(rows)
    assert list(t) == ["Convolution1D", "InnerProduct"]  # largest int8-model share first
    assert t["InnerProduct"] == {"layers": 2, "int8": 2, "int8-weight-only": 0, "fp16": 0, "fp32": 0,
                                 "bytes_before": 440, "bytes_fp16": 220, "bytes_after": 125}
    lines = format_by_type({"by_type": t, "totals": {"bytes_fp16": 620, "bytes_after": 525}, "layers": rows})
    assert lines[1].split()[-1] == "100%" and lines[-1].split()[-1] == "85%"


# -- model card, package, ship files --------------------------------------------------------------------------------

META = "SherpaMetaData sherpa_meta_data1 0 0 0=3 1=2 2=32 3=48"


@pytest.fixture
def fake_out(tmp_path):
    out = tmp_path / "my-model"
    out.mkdir()
    for n in NETS:
        (out / f"{n}_jit_trace-pnnx.ncnn.param").write_text("7767517\n2 2\n" + (META + "\n" if n == "encoder" else ""))
        (out / f"{n}_jit_trace-pnnx.ncnn.bin").write_bytes(b"\1" * 1000)
    (out / "tokens.txt").write_text("<blk> 0\n")
    (out / "bench.py").write_text("print()\n")
    (out / "test_wavs").mkdir()
    write_pcm(out / "test_wavs" / "a.wav", np.zeros(160))
    (out / "work").mkdir()
    (out / "work" / "big.pt").write_bytes(b"x")
    (out / "logs").mkdir()
    (out / "speed.json").write_text(json.dumps({"cores": 2, "rows": [
        {"model": "fp16", "threads": 1, "rtf": 0.125, "load_seconds": 0.5, "peak_mb": 40.0,
         "first_result_seconds": 0.25, "audio_seconds": 1.0}]}))
    (out / "validation.json").write_text(json.dumps({"decode": {"ok": True, "model": "fp16", "results": [
        {"wav": "/x/a.wav", "text": "HI", "reference": "HI THERE", "wer": 0.5}]}}))
    return out


def test_model_card_names_the_metadata_speed_and_hashes(fake_out):
    from core.pipeline.model_card import CardInfo, file_hashes, manifest_hash, render_card
    card = render_card(fake_out, CardInfo("lstm", "LSTM transducer", "lstm_transducer_stateless2",
                                          ["--num-encoder-layers", "2"]))
    assert f"`{META}`" in card and "lstm_transducer_stateless2" in card and "--num-encoder-layers 2" in card
    assert "| fp16 | 1 | 0.125 | 0.250 s | 0.500 s | 40.0 MB | 1.0 s |" in card  # each row names its own audio
    assert "WER 50.0%" in card and "sherpa_ncnn.Recognizer(" in card and "./build/bin/sherpa-ncnn" in card
    before = manifest_hash(file_hashes(fake_out))
    assert before in card and "test_wavs/a.wav" in card and "work/big.pt" not in card
    (fake_out / "tokens.txt").write_text("<blk> 0\na 1\n")
    assert manifest_hash(file_hashes(fake_out)) != before


def test_package_has_one_top_directory_and_only_shipped_files(fake_out):
    from core.pipeline.ship_steps import package_path, write_package
    (fake_out / "README.md").write_text("# card\n")
    target = write_package(fake_out)
    assert target == package_path(fake_out) == fake_out.parent / "my-model.tar.bz2"
    with tarfile.open(target) as tar:
        names = tar.getnames()
    assert all(n.startswith("my-model/") for n in names)
    assert {"my-model/README.md", "my-model/encoder_jit_trace-pnnx.ncnn.param", "my-model/tokens.txt",
            "my-model/test_wavs/a.wav", "my-model/bench.py"} <= set(names)
    assert not any("/work" in n or "/logs" in n or "validation.json" in n for n in names)
    assert not list(fake_out.parent.glob(".*snw-tmp"))


def test_test_wavs_are_copied_and_non_pcm_ones_converted(tmp_path):
    from core.pipeline.ship_steps import _pcm_copy, test_wav_names
    assert test_wav_names([Path("a/x.wav"), Path("b/x.wav"), Path("c/y.WAV")]) == ["x.wav", "x-1.wav", "y.wav"]
    src = write_float_wav(tmp_path / "f.wav", np.linspace(-0.5, 0.5, 320, dtype=np.float32))
    dst = tmp_path / "out.wav"
    assert _pcm_copy(src, dst) == "written as 16-bit PCM"
    with wave.open(str(dst)) as w:
        assert w.getsampwidth() == 2 and w.getnframes() == 320 and w.getframerate() == 16000
    assert _pcm_copy(WAVS[0], tmp_path / "same.wav") == "copied"
    assert (tmp_path / "same.wav").read_bytes() == WAVS[0].read_bytes()


def test_summary_extras_keep_speed_rows_without_texts(fake_out):
    from core.pipeline.ship_steps import summary_extras
    extras = summary_extras(fake_out)
    assert extras["speed"] == [{"model": "fp16", "threads": 1, "rtf": 0.125, "load_seconds": 0.5, "peak_mb": 40.0,
                                "first_result_seconds": 0.25}]
    assert "int8_layers" not in extras


# -- the plan -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_plan(tmp_path_factory):
    from core.pipeline.demo import demo_config
    from core.pipeline.plan import build_plan
    config = demo_config("lstm")
    config.output.dir = str(tmp_path_factory.mktemp("plan") / "out")
    config.output.int8 = True
    return build_plan(config)


def test_plan_measures_after_validation_and_writes_the_card_before_the_summary(int8_plan):
    ids = [s.id for s in int8_plan.plan.steps]
    assert ids[ids.index("validate-int8"):] == ["validate-int8", "validation-report", "ship-files", "speed",
                                                "int8-layers", "model-card", "summary"]
    # the fp16 checks run beside the int8 steps, from the moment the fp16 model is final; the int8 checks wait
    steps = {s.id: s for s in int8_plan.plan.steps}
    assert ids.index("metadata") + 1 == ids.index("validate") < ids.index("calibrate")
    assert steps["validate"].background and steps["validate-int8"].background and steps["validate-int8"].needs == ()
    # the int8 checks (no torch) start once quantization is done, beside the fp16 checks; the report joins both
    assert ids.index("quantize") + 1 == ids.index("validate-int8")
    report = steps["validation-report"]
    assert not report.background and report.needs == ("validate", "validate-int8")
    assert {steps["validate"].outputs[0], steps["validate-int8"].outputs[0]} == set(report.inputs)
    assert report.outputs == [int8_plan.out_dir / "validation.json"] and "--int8-only" in steps["validate-int8"].argv
    # the int8 check's fp32 half: recorded by the built-in calibration on its way (no fp32 pass of its own)
    assert "int8-reference" not in ids
    reference = int8_plan.out_dir / "work" / "int8-reference.npz"
    assert reference in steps["calibrate"].outputs and reference in steps["validate-int8"].inputs
    assert steps["validate-int8"].argv[steps["validate-int8"].argv.index("--int8-reference") + 1] == str(reference)
    assert ids.index("export") + 1 == ids.index("pnnx-encoder-fp32") and steps["pnnx-encoder-fp32"].background
    assert steps["fp32-set"].needs == ("pnnx-encoder-fp32",)
    speed = next(s for s in int8_plan.plan.steps if s.id == "speed")
    out = int8_plan.out_dir
    assert out / "encoder_jit_trace-pnnx.ncnn.int8.bin" in speed.inputs
    assert [p.name for p in speed.inputs if p.suffix == ".wav"] == [w.name for w in WAVS]
    assert all(p.parent == out / "test_wavs" for p in speed.inputs if p.suffix == ".wav")


def test_package_step_comes_last_and_is_in_the_script(int8_plan):
    from core.pipeline.ship_steps import add_package_step
    add_package_step(int8_plan)
    assert int8_plan.plan.steps[-1].id == "package" and int8_plan.plan.steps[-2].id == "summary"
    assert int8_plan.plan.steps[-1].outputs == [int8_plan.out_dir.parent / "out.tar.bz2"]
    assert "tar -C" in int8_plan.script


# -- the real thing (slow) ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    from tui.cli.main import main
    out = tmp_path_factory.mktemp("ship") / "lstm model"
    code = main(["run", "--demo", "lstm", "--int8", "--package", "--out", str(out)])
    return code, out


@pytest.mark.slow
def test_run_writes_speed_int8_layers_card_bench_and_package(shipped):
    code, out = shipped
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["speed"]
    assert {r["model"] for r in rows} == {"fp16", "int8"} and {r["threads"] for r in rows} == {1, len(os.sched_getaffinity(0))}
    assert all(r["rtf"] > 0 and r["load_seconds"] > 0 and 5 < r["peak_mb"] < 200 for r in rows)
    report = json.loads((out / "int8-layers.json").read_text())
    for net in ("encoder", "joiner"):
        mine = [r for r in report["layers"] if r["net"] == net]
        # every byte of the int8 .bin is some layer's: the per-layer sizes add up to the file
        assert sum(r["bytes_after"] for r in mine) == (out / f"{net}_jit_trace-pnnx.ncnn.int8.bin").stat().st_size
        assert sum(r["bytes_fp16"] for r in mine) == (out / f"{net}_jit_trace-pnnx.ncnn.bin").stat().st_size
    kinds = {r["type"]: r["precision"] for r in report["layers"]}
    assert kinds["InnerProduct"] == "int8" and kinds["LSTM"] == "int8-weight-only" and kinds["LayerNorm"] == "fp32"
    flags = (DEMO_ROOT / "models" / "lstm" / "flags.txt").read_text().split()
    layers = int(flags[flags.index("--num-encoder-layers") + 1])
    assert summary["int8_layers"]["by_type"]["LSTM"]["int8-weight-only"] == layers
    card = (out / "README.md").read_text()
    meta = next(l for l in (out / "encoder_jit_trace-pnnx.ncnn.param").read_text().splitlines()
                if l.startswith("SherpaMetaData"))
    assert " ".join(meta.split()) in card and "| int8 | 1 |" in card and "LSTM" in card
    with tarfile.open(out.parent / "lstm model.tar.bz2") as tar:
        names = set(tar.getnames())
    assert {"lstm model/README.md", "lstm model/bench.py", "lstm model/encoder_jit_trace-pnnx.ncnn.int8.bin",
            *(f"lstm model/test_wavs/{w.name}" for w in WAVS)} <= names


@pytest.mark.slow
def test_bench_py_runs_with_only_sherpa_ncnn_and_numpy(shipped, tmp_path):
    _, out = shipped
    import numpy
    import sherpa_ncnn
    site = Path(sherpa_ncnn.__file__).parents[1]
    assert Path(numpy.__file__).parents[1] == site
    shim = tmp_path / "only"
    shim.mkdir()
    for p in site.iterdir():
        if p.name.startswith(("sherpa_ncnn", "numpy", "_sherpa_ncnn")):
            (shim / p.name).symlink_to(p)
    env = dict(os.environ, PYTHONPATH=str(shim))
    # -S: no site-packages at all, so anything beyond the shim (soundfile, the wizard) would fail to import
    r = subprocess.run([sys.executable, "-S", "bench.py", "--threads", "1", "--json"], cwd=out, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["model"], x["threads"]) for x in rows] == [("fp16", 1), ("int8", 1)] and all(x["rtf"] > 0 for x in rows)


@pytest.mark.slow
def test_bench_names_a_model_that_crashes_sherpa_ncnn(shipped, tmp_path, cli):
    _, out = shipped
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        if f.is_file() and (f.suffix in (".param", ".bin") or f.name == "tokens.txt"):
            (broken / f.name).write_bytes(f.read_bytes())
    enc = broken / "encoder_jit_trace-pnnx.ncnn.bin"
    enc.write_bytes(enc.read_bytes()[:100])
    code, stdout, err = cli("bench", broken, "--wav", WAVS[0], "--threads", "1", "--model", "fp16", "--json")
    assert code == 1 and "Traceback" not in err
    report = json.loads(stdout)
    assert report["errors"] and "fp16, 1 thread(s): " in report["errors"][0] and "sherpa-ncnn" in report["errors"][0]
    # the good model through the same command
    code, stdout, _ = cli("bench", out, "--wav", WAVS[0], "--threads", "1", "--json")
    assert code == 0 and {r["model"] for r in json.loads(stdout)["rows"]} == {"fp16", "int8"}


@pytest.mark.slow
def test_sherpa_ncnn_loads_our_hotwords_file_and_exits_on_a_word_start_token(shipped, tmp_path, cli):
    _, out = shipped
    words = tmp_path / "w.txt"
    words.write_text("HE LL\nO :2\n")
    good = tmp_path / "good.txt"
    assert cli("hotwords", words, "--tokens", out / "tokens.txt", "--out", good)[0] == 0
    bad = tmp_path / "bad.txt"
    bad.write_text("▁THE\n")  # in tokens.txt, and still unknown to sherpa-ncnn: why the tool refuses it
    code = ("import sys, sherpa_ncnn\nd = sys.argv[1]\nf = lambda n, e: f'{d}/{n}_jit_trace-pnnx.ncnn.{e}'\n"
            "r = sherpa_ncnn.Recognizer(tokens=d + '/tokens.txt', encoder_param=f('encoder', 'param'), "
            "encoder_bin=f('encoder', 'bin'), decoder_param=f('decoder', 'param'), decoder_bin=f('decoder', 'bin'), "
            "joiner_param=f('joiner', 'param'), joiner_bin=f('joiner', 'bin'), num_threads=1, "
            "decoding_method='modified_beam_search', hotwords_file=sys.argv[2])\nprint('LOADED')\n")
    ok = subprocess.run([sys.executable, "-c", code, str(out), str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "LOADED" in ok.stdout, ok.stderr
    crash = subprocess.run([sys.executable, "-c", code, str(out), str(bad)], capture_output=True, text=True,
                           timeout=120)
    assert crash.returncode != 0 and "LOADED" not in crash.stdout


# -- dataset WER ----------------------------------------------------------------------------------------------------

def make_librispeech(root: Path, texts: list[str], fmt: str = "flac", wavs: list[Path] = WAVS) -> Path:
    """A LibriSpeech-layout dataset of the demo wavs (FLAC via soundfile) with the given transcripts."""
    import soundfile as sf
    from core.common.audio import read_wav
    d = root / "19" / "198"
    d.mkdir(parents=True)
    lines = []
    for i, (w, t) in enumerate(zip(wavs, texts)):
        x = read_wav(w).samples
        sf.write(str(d / f"19-198-{i:04d}.{fmt}"), x, 16000)
        lines.append(f"19-198-{i:04d} {t}")
    (d / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_dataset_layouts_are_read_and_bad_lines_named(tmp_path):
    from core.validation.dataset import DatasetError, read_dataset
    ls = make_librispeech(tmp_path / "ls", ["A B", "C", "D"])
    (ls / "19" / "198" / "19-198.trans.txt").write_text("19-198-0000 A B\n19-198-0009 GONE\n")
    ds = read_dataset(ls)
    assert ds.layout == "librispeech" and [(i.id, i.text) for i in ds.items] == [("19-198-0000", "A B")]
    assert ds.problems == [f"{ls / '19' / '198' / '19-198.trans.txt'}:2: no 19-198-0009.flac or 19-198-0009.wav "
                           "beside it"]
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {WAVS[0]}\nu2 sox x.wav -t wav - |\nu3 {WAVS[1]}\nu4\n")
    (kaldi / "text").write_text("u1 HELLO THERE\nu2 X\n")
    ds = read_dataset(kaldi)
    assert ds.layout == "kaldi" and [i.id for i in ds.items] == ["u1"] and ds.items[0].text == "HELLO THERE"
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in ds.problems] == ["2", "3", "4"]
    assert "command pipe" in ds.problems[0] and "u3 has no line" in ds.problems[1]
    lst = tmp_path / "list.tsv"
    (tmp_path / "a.wav").write_bytes(WAVS[0].read_bytes())
    lst.write_text("a.wav\tTHE TEXT\n# comment\nmissing.wav\tX\n")
    ds = read_dataset(lst)
    assert ds.layout == "list" and ds.items[0].audio == tmp_path / "a.wav" and ds.items[0].text == "THE TEXT"
    assert ds.problems == [f"{lst}:3: {tmp_path / 'missing.wav'} not found"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="neither LibriSpeech"):
        read_dataset(empty)
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nope")


def test_wer_counts_substitutions_deletions_insertions_after_normalising():
    from core.validation.dataset import Dataset, Item, normalize, wer
    assert normalize("Hello, World!  it's") == "HELLO WORLD IT'S"
    ds = Dataset(Path("."), "list", [Item("a", Path("a"), "the cat sat"), Item("b", Path("b"), "on the mat"),
                                     Item("c", Path("c"), "")])
    results = {"a": {"text": "THE CAT SAT"}, "b": {"text": "ON A MAT TODAY"}, "c": {"text": "UM"}}
    r = wer(ds, results, "fp16")
    assert (r["substitutions"], r["deletions"], r["insertions"], r["words"]) == (1, 0, 2, 6)
    assert r["wer"] == pytest.approx(3 / 6)


def test_a_torn_cache_keeps_the_lines_before_the_tear(tmp_path):
    from core.validation.dataset import _load_cache
    cache = tmp_path / "fp16.jsonl"
    cache.write_text('{"model_key": "k"}\n{"id": "a", "text": "X"}\n{"id": "b", "te')
    assert list(_load_cache(cache, "k")) == ["a"]
    assert _load_cache(cache, "other model") == {}


def test_dataset_settings_are_checked(tmp_path):
    from core.pipeline.config import ConfigError, config_from_dict, load_config
    with pytest.raises(ConfigError, match="validation.max_wer_increase must be a number"):
        config_from_dict({"validation": {"max_wer_increase": "half"}})
    toml = tmp_path / "w.toml"
    toml.write_text('[validation]\ndataset = "data/test"\nmax_wer_increase = 1\n')
    config = load_config(toml)
    assert config.validation.dataset == str(tmp_path / "data" / "test") and config.validation.max_wer_increase == 1.0
    from core.pipeline.ship_steps import dataset_problems
    assert dataset_problems(str(tmp_path / "data")) == [f"validation.dataset: {tmp_path / 'data'}: not found"]


def _ctx(tmp_path, logs: list):
    import threading
    from core.pipeline.runner import StepContext
    return StepContext("dataset-wer", tmp_path, logs.append, lambda *a: None, threading.Event())


@pytest.mark.slow
def test_dataset_wer_of_fp16_and_int8_and_the_gate(shipped, tmp_path):
    from core.validation.dataset import decode_dataset, read_dataset
    from core.pipeline.layout import Layout
    from core.pipeline.runner import StepError
    from core.pipeline.ship_steps import make_dataset_step
    _, out = shipped
    # 1. what fp16 says becomes the reference, so fp16's WER is 0 and int8's is what int8 changed (the 20 held-out
    # utterances: the trained demo's int8 agrees with fp16 on the 5 test wavs but not on all of these)
    held = sorted((DEMO_ROOT / "heldout").rglob("*.wav"))
    probe = read_dataset(make_librispeech(tmp_path / "probe", ["X"] * len(held), fmt="wav", wavs=held))
    fp16 = decode_dataset(out, probe, "fp16", tmp_path / "probe-cache" / "fp16.jsonl")
    int8 = decode_dataset(out, probe, "int8", tmp_path / "probe-cache" / "int8.jsonl")
    assert [fp16[i.id]["text"] for i in probe.items] != [int8[i.id]["text"] for i in probe.items]
    data = make_librispeech(tmp_path / "data", [fp16[i.id]["text"] or "SILENCE" for i in probe.items], wavs=held)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for f in out.iterdir():  # the model files only, in a scratch run dir (the shared fixture stays as it is)
        if f.is_file() and (f.suffix in (".param", ".bin") or f.name == "tokens.txt"):
            (run_dir / f.name).symlink_to(f)
    layout = Layout(run_dir)
    logs: list[str] = []
    with pytest.raises(StepError, match=r"int8 is \d+\.\d\d WER points worse than fp16"):
        make_dataset_step(layout, data, True, 0.5).func(_ctx(tmp_path, logs))
    report = json.loads((run_dir / "dataset-wer.json").read_text())
    w = {m["model"]: m for m in report["models"]}
    assert w["fp16"]["wer"] == 0 and w["int8"]["wer"] > 0 and report["gate_ok"] is False
    assert report["int8_increase_points"] == pytest.approx(w["int8"]["wer"] * 100, abs=1e-3)
    assert report["changed"] and all(c["fp16"] != c["int8"] for c in report["changed"])
    # 2. resumable: a second run decodes nothing again (every file comes from the cache) and a loose gate passes
    progress = []
    step = make_dataset_step(layout, data, True, 100.0)
    import threading
    from core.pipeline.runner import StepContext
    step.func(StepContext("d", tmp_path, logs.append, lambda i, n, note: progress.append(note), threading.Event()))
    assert progress == [f"fp16: {len(held)} cached", f"int8: {len(held)} cached"]
    assert json.loads((run_dir / "dataset-wer.json").read_text())["gate_ok"] is True


async def test_the_wizard_summary_shows_speed_and_int8_by_type(fake_out):
    from core.pipeline.demo import demo_config
    from tui.wizard.app import WizardApp
    from tui.wizard.run import SummaryScreen
    by_type = {"Convolution1D": {"layers": 24, "int8": 0, "int8-weight-only": 0, "fp16": 24, "fp32": 0,
                                 "bytes_before": 2, "bytes_fp16": 78432, "bytes_after": 78432}}
    (fake_out / "summary.json").write_text(json.dumps({"sizes": [], "files": [], "speed": [
        {"model": "int8", "threads": 2, "rtf": 0.25, "load_seconds": 0.5, "peak_mb": 40.0,
         "first_result_seconds": None}], "int8_layers": {"by_type": by_type}}))
    app = WizardApp(config=demo_config("lstm"))
    async with app.run_test(size=(120, 50)) as pilot:
        await app.push_screen(SummaryScreen(fake_out))
        await pilot.pause()
        shown = str(app.screen.query_one("#shipped").render())
    lines = shown.splitlines()
    assert lines[1].split() == ["int8", "2", "0.250", "-", "0.500", "s", "40.0", "MB"]
    assert lines[2].startswith("int8 by layer type") and lines[3].split() == ["Convolution1D", "24", "0", "0", "24",
                                                                              "76.6", "KB", "76.6", "KB"]
    assert len({len(l) for l in lines[2:]}) == 1  # the type table's columns line up


REAL = SHARED_REAL


@pytest.mark.skipif(not (REAL / "lstm").is_dir(), reason=f"the icefall-real fixtures are not at {REAL}")
def test_from_ncnn_takes_dataset_and_package_too(tmp_path, cli):
    data = tmp_path / "list.tsv"
    data.write_text(f"{WAVS[0]}\tHELLO\n")
    flags = (REAL / "lstm" / "export-flags.txt").read_text().split()
    code, out, err = cli("run", "--from-ncnn", REAL / "lstm", "--arch", "lstm", *flags, "--out", tmp_path / "o",
                         "--wav", WAVS[0], "--dataset", data, "--package", "--dry-run")
    assert code == 0, err
    titles = [l.split(". ", 1)[1] for l in out.splitlines() if re.match(r"^\s*\d+\. ", l)]
    assert titles[-4:] == ["WER on the dataset (fp16)", "Write the model card (README.md)",
                           "Summary: sizes and results", "Pack the model into OUT.tar.bz2"]
    code, _, err = cli("run", "--from-ncnn", REAL / "lstm", "--arch", "lstm", *flags, "--out", tmp_path / "o",
                       "--dataset", tmp_path / "nope", "--dry-run")
    assert code == 2 and "validation.dataset:" in err and "nope: not found" in err
