"""Seeded mutation fuzzing through the CLI entry points, in-process: no exception escapes, exit codes 0/1/2 only.

Inputs: encoder params (doctor, meta, rewrite), scale tables (quantize), tokens.txt (doctor on a directory) and
wizard.toml (run --dry-run). Each mutation flips, deletes, inserts hostile snippets or truncates; the seeds are
fixed so a failure is reproducible (the test id names the seed).
"""
from __future__ import annotations

import random
import resource
import shutil

import pytest

from conftest import FIXTURES, SHARED_FIXTURES

SNIPPETS = [b"\x00", b"9" * 40, b" 0=", b"\r\n", "é".encode(), b"-23300=99999999,1", b"=", b",", b"\"", b"nan",
            b"inf", b"-", b"1e999", b"\xff\xfe", b"\n\n", b" ", b"[", b"]", b"\"\"\"", b"= =", b"999999999"]
ROUNDS = 240


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        op, pos = rng.random(), rng.randrange(len(data))
        if op < 0.35:
            data[pos] = rng.randrange(256)
        elif op < 0.55:
            del data[pos:pos + rng.randint(1, 200)]
        elif op < 0.85:
            data[pos:pos] = rng.choice(SNIPPETS)
        else:
            del data[pos:]
    return bytes(data)


@pytest.fixture(autouse=True)
def bounded_memory():
    """A runaway allocation fails the test instead of the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 6 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _check(code, what):
    assert code in (0, 1, 2), f"{what}: exit {code}"


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_params_through_doctor_meta_rewrite(seed, tmp_path, cli):
    rng = random.Random(seed)
    bases = [(FIXTURES / a / "encoder_jit_trace-pnnx.ncnn.param").read_bytes() for a in ("lstm", "zipformer",
                                                                                         "conv-emformer")]
    for k in range(ROUNDS // 4):
        f = tmp_path / f"encoder_jit_trace-pnnx.ncnn.param"
        f.write_bytes(mutate(rng.choice(bases), rng))
        code, _, err = cli("doctor", f, "--json")
        _check(code, f"doctor seed {seed} #{k}")
        code, _, _ = cli("meta", f, "--arch", rng.choice(["lstm", "zipformer", "conv-emformer"]), "--json")
        _check(code, f"meta seed {seed} #{k}")
        code, _, _ = cli("rewrite", f, "--json")
        _check(code, f"rewrite seed {seed} #{k}")


def test_fuzzed_scale_tables_through_quantize(tmp_path, cli):
    rng = random.Random(11)
    src = SHARED_FIXTURES / "lstm"
    param, binary = tmp_path / "j.param", tmp_path / "j.bin"
    shutil.copy(src / "joiner_jit_trace-pnnx.ncnn.param", param)
    shutil.copy(src / "joiner_jit_trace-pnnx.ncnn.bin", binary)
    base = b"joiner_linear_0_param_0 127.5 130.1\njoiner_linear_0 42.0\n"
    for k in range(ROUNDS // 3):
        table = tmp_path / "t.txt"
        table.write_bytes(mutate(base, rng))
        code, out, _ = cli("quantize", param, binary, tmp_path / "o.param", tmp_path / "o.bin", table, "--json")
        _check(code, f"quantize #{k}")
        assert out.strip().startswith("{"), f"quantize #{k}: --json printed no JSON object"


def test_fuzzed_tokens_through_doctor(tmp_path, cli, model_dir):
    rng = random.Random(5)
    d = model_dir("lstm")
    base = (d / "tokens.txt").read_bytes()
    for k in range(ROUNDS // 3):
        (d / "tokens.txt").write_bytes(mutate(base, rng))
        code, _, _ = cli("doctor", d, "--json")
        _check(code, f"doctor tokens #{k}")


def test_fuzzed_wizard_toml_through_run_dry_run(tmp_path, cli):
    rng = random.Random(3)
    base = b'''arch = "lstm"
[hyperparameters]
num-encoder-layers = 2
encoder-dim = "128"
[files]
recipe = "r"
checkpoint = "exp/pretrained.pt"
tokens = "tokens.txt"
[output]
dir = "out"
int8 = true
[calibration]
wavs = ["a.wav"]
'''
    for k in range(ROUNDS // 3):
        cfg = tmp_path / "wizard.toml"
        cfg.write_bytes(mutate(base, rng))
        code, _, _ = cli("run", "--config", cfg, "--dry-run")
        _check(code, f"run --config #{k}")
