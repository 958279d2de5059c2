"""Flags that do not apply are refused or named as ignored; paths are taken from the user's directory."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import SHARED_FIXTURES, fixture_flags


def test_run_refuses_arch_with_demo(cli):
    code, _, err = cli("run", "--demo", "lstm", "--arch", "zipformer", "--dry-run")
    assert code == 2 and "--arch applies to 'run --from-ncnn' only" in err


def test_run_names_int8_flags_it_ignores(cli):
    code, _, err = cli("run", "--demo", "lstm", "--resample", "--int8-backend", "auto", "--dry-run")
    assert code == 0 and "--int8-backend, --resample ignored: no int8 set is made" in err


def _model_with_metadata(tmp_path, cli):
    d = tmp_path / "m"
    d.mkdir()
    for f in SHARED_FIXTURES.joinpath("lstm").glob("*.ncnn.*"):
        shutil.copyfile(f, d / f.name)
    shutil.copyfile(SHARED_FIXTURES / "lstm" / "tokens.txt", d / "tokens.txt")
    code, _, _ = cli("meta", d / "encoder_jit_trace-pnnx.ncnn.param", "--arch", "lstm", *fixture_flags("lstm"),
                     "--apply")
    assert code == 0
    return d


def test_validate_refuses_an_arch_the_metadata_contradicts(tmp_path, cli):
    d = _model_with_metadata(tmp_path, cli)
    code, _, err = cli("validate", d, "--arch", "zipformer")
    assert code == 2 and "the encoder's SherpaMetaData says lstm" in err


def test_validate_takes_relative_wavs_from_the_users_directory(tmp_path, cli, monkeypatch):
    d = _model_with_metadata(tmp_path, cli)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("validate", "m", "--wav", "nowhere/x.wav")
    assert code == 2 and f"taken from {tmp_path}" in err
    from tui.cli.validate import _usage_problems

    class Args:
        wav, traced_dir, arch = ["m/tokens.txt"], None, None  # any existing file: only the lookup is tested
    assert _usage_problems(Args, d) == []


def test_validate_on_a_read_only_model_dir_reports_elsewhere(tmp_path, cli, monkeypatch):
    import os

    import core.validation.launch as launch
    d = _model_with_metadata(tmp_path, cli)
    seen = {}

    def fake_run(out, traced, wavs, json_out, *, arch=None, capture=False):
        seen["json_out"] = json_out
        return launch.ValidationRun(0, "", json_out)
    monkeypatch.setattr(launch, "run_validation", fake_run)
    import tui.cli.validate as command
    real_access = os.access
    # root ignores permission bits, so the directory is made read-only as the command sees it
    monkeypatch.setattr(command.os, "access", lambda p, m: False if Path(p) == d and m == os.W_OK else real_access(p, m))
    code, _, err = cli("validate", d)
    assert code == 0 and "read-only" in err and d not in seen["json_out"].parents
