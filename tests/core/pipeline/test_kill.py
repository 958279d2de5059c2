"""SIGKILL at random moments of the writing commands: the target and its backup are always whole.

`meta --apply`, `rewrite --apply` (param and .bin) and `quantize` (a .param/.bin pair) are killed after a random
delay, many times; after each kill (and the sweep the next run does) every file is either exactly what it was or
exactly what a finished command writes, a backup is exactly the original, and a pair is never mixed.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SHARED_FIXTURES, fixture_flags
from tests.paths import REPO

BUDGET_SECONDS = 10.0  # per command
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _cli(*args):
    return [sys.executable, "-m", "tui.cli.main", *map(str, args)]


def _finished_result(cmd, setup):
    """What the command writes when it is left alone."""
    d = setup()
    subprocess.run(cmd(d), env=ENV, capture_output=True, check=False)
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def _kill_loop(cmd, setup, check, rng):
    end = time.monotonic() + BUDGET_SECONDS
    runs = 0
    while time.monotonic() < end:
        d = setup()
        proc = subprocess.Popen(cmd(d), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        from core.common.atomic import sweep_temp_files
        sweep_temp_files(d)
        check(d)
        runs += 1
    return runs


def _lstm(tmp_path, names=("encoder",)):
    counter = iter(range(10 ** 6))

    def setup():
        d = tmp_path / f"k{next(counter)}"
        d.mkdir()
        for n in names:
            for ext in ("param", "bin"):
                f = d / f"{n}_jit_trace-pnnx.ncnn.{ext}"
                shutil.copyfile(SHARED_FIXTURES / "lstm" / f.name, f)
        return d
    return setup


@pytest.mark.slow
def test_meta_apply_killed_anywhere_leaves_whole_files(tmp_path):
    setup = _lstm(tmp_path)
    name = "encoder_jit_trace-pnnx.ncnn.param"
    original = (SHARED_FIXTURES / "lstm" / name).read_bytes()
    cmd = lambda d: _cli("meta", d / name, "--arch", "lstm", *fixture_flags("lstm"), "--apply")  # noqa: E731
    done = _finished_result(cmd, setup)[name]
    assert done != original

    def check(d):
        assert (d / name).read_bytes() in (original, done)
        backup = d / (name + ".orig")
        if backup.exists():
            assert backup.read_bytes() == original
        assert not [p for p in d.iterdir() if p.name.startswith(".")]
    assert _kill_loop(cmd, setup, check, random.Random(1)) > 5


@pytest.mark.slow
def test_rewrite_apply_killed_anywhere_leaves_whole_files(tmp_path):
    setup = _lstm(tmp_path)
    name = "encoder_jit_trace-pnnx.ncnn.param"
    original = (SHARED_FIXTURES / "lstm" / name).read_bytes()
    cmd = lambda d: _cli("rewrite", d / name, "--apply")  # noqa: E731
    done = _finished_result(cmd, setup)[name]
    assert done != original

    def check(d):
        assert (d / name).read_bytes() in (original, done)
        backup = d / (name + ".orig")
        if backup.exists():
            assert backup.read_bytes() == original
    assert _kill_loop(cmd, setup, check, random.Random(2)) > 5


@pytest.mark.slow
def test_quantize_killed_anywhere_never_mixes_a_pair(tmp_path):
    setup0 = _lstm(tmp_path, names=("joiner",))

    def setup():
        d = setup0()
        (d / "table.txt").write_text("")
        (d / "q.param").write_bytes(b"old param")  # an earlier int8 pair that the new one replaces
        (d / "q.bin").write_bytes(b"old bin")
        return d
    cmd = lambda d: _cli("quantize", d / "joiner_jit_trace-pnnx.ncnn.param", d / "joiner_jit_trace-pnnx.ncnn.bin",  # noqa: E731
                         d / "q.param", d / "q.bin", d / "table.txt")
    done = _finished_result(cmd, setup)

    def check(d):
        param, binary = d / "q.param", d / "q.bin"
        if param.exists():  # a .param is only ever there beside its own .bin
            pair = (param.read_bytes(), binary.read_bytes())
            assert pair in ((b"old param", b"old bin"), (done["q.param"], done["q.bin"])), "mixed pair"
    assert _kill_loop(cmd, setup, check, random.Random(3)) > 5
