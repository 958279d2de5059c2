"""The CLI contract: meta and doctor output, JSON, exit codes, fast --help."""
import json
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO, fixture_flags
from tests.paths import REPO


@pytest.fixture
def encoder(tmp_path):
    def make(arch="conv-emformer"):
        p = tmp_path / "enc dir" / "encoder_jit_trace-pnnx.ncnn.param"  # a path with a space
        p.parent.mkdir(exist_ok=True)
        p.write_bytes((FIXTURES / arch / "encoder_jit_trace-pnnx.ncnn.param").read_bytes())
        return p
    return make


def test_meta_preview_writes_nothing_and_says_so(cli, encoder):
    p = encoder()
    before = p.read_bytes()
    code, out, _ = cli("meta", p, "--arch", "conv-emformer", *fixture_flags("conv-emformer"))
    assert code == 0
    assert "0=1 1=4 2=32 3=31 4=8 5=32 6=8 7=144" in out
    assert "361 458 -> 362 458" in out and "Nothing was written" in out
    assert p.read_bytes() == before


def test_meta_json_has_the_contract_keys(cli_json, encoder):
    code, r = cli_json("meta", encoder("lstm"), "--arch", "lstm", *fixture_flags("lstm"))
    assert code == 0
    for key in ("line", "header_before", "header_after", "warnings", "errors", "applied"):
        assert key in r
    assert r["line"].endswith("0=3 1=3 2=192 3=384") and r["applied"] is False
    assert r["header_before"] == "91 121" and r["header_after"] == "92 121"
    assert any("Tensor.to" in w for w in r["warnings"])


def test_meta_json_prints_only_json(encoder):
    p = encoder()
    proc = subprocess.run([sys.executable, "-m", "tui.cli.main", "meta", str(p), "--arch", "conv-emformer", "--json",
                           *fixture_flags("conv-emformer")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0
    json.loads(proc.stdout)  # the whole of stdout is one JSON object


def test_meta_apply_then_again_is_unchanged(cli_json, encoder):
    p = encoder()
    code, r = cli_json("meta", p, "--arch", "conv-emformer", "--apply", *fixture_flags("conv-emformer"))
    assert code == 0 and r["applied"] is True and r["backup"].endswith(".orig")
    assert p.read_text().splitlines()[2] == r["line"]
    code, r2 = cli_json("meta", p, "--arch", "conv-emformer", "--apply", *fixture_flags("conv-emformer"))
    assert code == 0 and r2["applied"] is False and r2["action"] == "unchanged"


def test_meta_marks_defaults(cli_json, encoder):
    code, r = cli_json("meta", encoder(), "--arch", "conv-emformer", "--num-encoder-layers", "4",
                       "--encoder-dim", "144", "--memory-size", "32", "--nhead", "4")
    assert code == 0
    assert "--left-context-length" in r["defaults"] and "--num-encoder-layers" not in r["defaults"]
    assert r["values"]["--chunk-length"] == {"value": "32", "source": "default"}


def test_meta_accepts_icefall_syntax_and_a_pasted_export_command(cli_json, encoder):
    p = encoder("zipformer")
    flags = fixture_flags("zipformer")
    as_equals = [f"{k}={v}" for k, v in zip(flags[0::2], flags[1::2])]
    code, r = cli_json("meta", p, "--arch", "zipformer", "--epoch", "99", "--avg", "1", "--exp-dir", "exp",
                       "--use-averaged-model", "0", "--tokens", "tokens.txt", *as_equals)
    assert code == 0, r["errors"]
    assert "-23316=5,2,2,2,2,2" in r["line"]
    assert any("--epoch" in w and "ignored" in w for w in r["warnings"])


def test_meta_graph_mismatch_exits_1_and_writes_nothing(cli_json, encoder):
    p = encoder()
    before = p.read_bytes()
    code, r = cli_json("meta", p, "--arch", "conv-emformer", "--apply", "--num-encoder-layers", "12",
                       "--memory-size", "32")
    assert code == 1 and r["applied"] is False
    assert any("17 Input blobs" in e for e in r["errors"])
    assert p.read_bytes() == before


@pytest.mark.parametrize("args,words", [
    (["--chunk-length", "24"], "power of two"),
    (["--left-context-length", "abc"], "not a whole number"),
])
def test_meta_bad_hyperparameters_exit_2_naming_the_flag(cli_json, encoder, args, words):
    code, r = cli_json("meta", encoder(), "--arch", "conv-emformer", *args)
    assert code == 2 and any(words in e and args[0] in e for e in r["errors"])


def test_meta_unreadable_param_exits_2(cli_json, tmp_path):
    bad = tmp_path / "x.param"
    bad.write_bytes(b"\x00\xffnot text")
    code, r = cli_json("meta", bad, "--arch", "lstm")
    assert code == 2 and any("not UTF-8" in e for e in r["errors"])
    code, r = cli_json("meta", tmp_path / "missing.param", "--arch", "lstm")
    assert code == 2 and any("not found" in e for e in r["errors"])


def test_meta_unknown_flag_exits_2_with_a_suggestion(cli, encoder):
    code, _, err = cli("meta", encoder(), "--arch", "lstm", "--rnn-hiden-size", "384")
    assert code == 2 and "did you mean --rnn-hidden-size" in err


def test_meta_flag_of_another_architecture_is_ignored_with_a_warning(cli_json, encoder):
    code, r = cli_json("meta", encoder(), "--arch", "conv-emformer", "--memory-size", "32",
                       "--num-encoder-layers", "4", "--encoder-dim", "144", "--nhead", "4", "--rnn-hidden-size", "1")
    assert code == 0 and any("--rnn-hidden-size is not a ConvEmformer flag" in w for w in r["warnings"])


def test_meta_requires_arch(cli, encoder):
    code, _, err = cli("meta", encoder())
    assert code == 2 and "--arch" in err


def test_doctor_exit_codes_and_json(cli, cli_json, model_dir, tmp_path):
    d = model_dir("conv-emformer")
    code, r = cli_json("doctor", d)
    assert code == 1 and r["healthy"] is False and r["errors"] >= 1
    cli("meta", d / "encoder_jit_trace-pnnx.ncnn.param", "--arch", "conv-emformer", "--apply",
        *fixture_flags("conv-emformer"))
    code, r = cli_json("doctor", d)
    assert code == 0 and r["healthy"] is True and r["metadata"]["7"] == 144
    code, r = cli_json("doctor", tmp_path / "nothing-here")
    assert code == 2 and r["usable"] is False
    code, out, _ = cli("doctor", d)
    assert code == 0 and "healthy" in out


HELP_PROBE = r"""
import sys
from tui.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = [m for m in ("torch", "textual", "sherpa_ncnn", "pnnx", "sentencepiece") if m in sys.modules]
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["meta", "--help"], ["doctor", "--help"], []])
def test_help_is_fast_and_imports_nothing_heavy(args):
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE, *args], cwd=REPO, capture_output=True, text=True)
    assert "HEAVY:\n" in proc.stderr, proc.stderr
    assert "usage: sherpa-ncnn-wizard" in proc.stdout


def test_core_never_imports_textual():
    """Every module of every core subpackage imported, textual (and the front-ends) never loaded."""
    probe = ("import sys, pkgutil, importlib, core\n"
             "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'core.')]\n"
             "for name in names: importlib.import_module(name)\n"
             "print(len(names), 'textual' in sys.modules, any(m.startswith('tui') for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    count, textual, tui = proc.stdout.split()
    assert int(count) > 40 and (textual, tui) == ("False", "False"), proc.stderr