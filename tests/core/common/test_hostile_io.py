"""Files the tool writes and edits: permissions, owners, links, backups, pairs, leftovers, locks, bounds."""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.common.atomic import (TEMP_SUFFIX, WriteError, atomic_write_bytes, atomic_write_pair, backup_once,
                         recover_pairs, sweep_temp_files, temp_name)
from core.common.locks import LockError, RunLock, edit_lock
from core.ncnn.param import load_param, parse_param

from conftest import FIXTURES, SHARED_FIXTURES, fixture_flags
from tests.paths import REPO

LSTM_PARAM = FIXTURES / "lstm" / "encoder_jit_trace-pnnx.ncnn.param"


def test_new_files_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644


def test_replace_keeps_mode_and_refuses_read_only_unless_forced(tmp_path):
    f = tmp_path / "a.param"
    f.write_bytes(b"old")
    os.chmod(f, 0o640)
    atomic_write_bytes(f, b"new")
    assert f.read_bytes() == b"new" and f.stat().st_mode & 0o777 == 0o640
    os.chmod(f, 0o444)
    with pytest.raises(WriteError, match="read-only"):
        atomic_write_bytes(f, b"newer")
    assert f.read_bytes() == b"new"
    atomic_write_bytes(f, b"forced", force=True)
    assert f.read_bytes() == b"forced" and f.stat().st_mode & 0o777 == 0o444


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_replace_keeps_another_users_ownership(tmp_path):
    f = tmp_path / "theirs.param"
    f.write_bytes(b"old")
    os.chown(f, 65534, 65534)
    atomic_write_bytes(f, b"new")
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_symlink_is_edited_through_its_target(tmp_path):
    real = tmp_path / "real.param"
    real.write_bytes(b"old")
    link = tmp_path / "link.param"
    link.symlink_to(real)
    written = atomic_write_bytes(link, b"new")
    assert link.is_symlink() and written == real and real.read_bytes() == b"new"


def test_output_that_is_a_directory_is_a_sentence(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(WriteError, match="not a regular file"):
        atomic_write_bytes(tmp_path / "d", b"x")


def test_backup_is_written_atomically_and_never_truncated(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"A" * 100_000)
    b = backup_once(f)
    assert b.read_bytes() == b"A" * 100_000
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))
    f.write_bytes(b"B")
    assert backup_once(f).read_bytes() == b"A" * 100_000  # the first original survives


def test_pair_commit_leaves_no_new_bin_beside_an_old_param_after_a_kill(tmp_path):
    param, binary = tmp_path / "m.param", tmp_path / "m.bin"
    param.write_bytes(b"old param")
    binary.write_bytes(b"old bin")
    # a child is killed right after it renamed the .bin (the .param rename never happened)
    code = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
import core.common.atomic as a
real = a._commit
def commit(tmp, target):
    real(tmp, target)
    if str(target).endswith('.bin'):
        os.kill(os.getpid(), 9)
a._commit = commit
a.atomic_write_pair({str(param)!r}, b'new param', {str(binary)!r}, b'new bin')
"""
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode == -9
    assert binary.read_bytes() == b"new bin"
    assert not param.exists()  # never the old param beside the new bin
    notes = sweep_temp_files(tmp_path)  # the next run rolls the pair forward
    assert param.read_bytes() == b"new param" and binary.read_bytes() == b"new bin"
    assert any("interrupted write" in n for n in notes)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pair_commit_normal(tmp_path):
    atomic_write_pair(tmp_path / "x.param", b"p", tmp_path / "x.bin", b"b")
    assert (tmp_path / "x.param").read_bytes() == b"p" and (tmp_path / "x.bin").read_bytes() == b"b"
    assert recover_pairs(tmp_path) == []


def test_leftover_temp_files_of_dead_processes_are_swept_and_named(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".encoder.bin.{dead.stdout.strip()}{TEMP_SUFFIX}"
    leftover.write_bytes(b"x" * 1000)
    mine = temp_name(tmp_path / "busy.bin")
    mine.write_bytes(b"y")
    notes = sweep_temp_files(tmp_path)
    assert not leftover.exists() and any("1,000 bytes" in n for n in notes)
    assert not mine.exists()  # our own pid: not a live writer in another process


def test_run_lock_refuses_a_second_run_by_name(tmp_path):
    with RunLock(tmp_path, command="run --demo lstm"):
        with pytest.raises(LockError, match="another sherpa-ncnn-wizard run.*run --demo lstm"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # free again


def test_edit_lock_follows_a_replaced_file(tmp_path):
    f = tmp_path / "e.param"
    f.write_bytes(b"1")
    with edit_lock(f):
        atomic_write_bytes(f, b"2")  # new inode
    with edit_lock(f, wait=1):
        assert f.read_bytes() == b"2"


def test_two_concurrent_meta_apply_lose_no_edit(tmp_path):
    """Both processes edit the same file; the second must see the first one's result, not overwrite it."""
    p = tmp_path / "encoder_jit_trace-pnnx.ncnn.param"
    p.write_bytes(LSTM_PARAM.read_bytes())
    flags = fixture_flags("lstm")
    cli = [sys.executable, "-m", "tui.cli.main", "meta", str(p), "--arch", "lstm", "--apply", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(cli + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    results = [json.loads(pr.communicate()[0]) for pr in procs]
    actions = sorted(r["action"] for r in results)
    assert actions == ["insert", "unchanged"], actions
    model = load_param(p).model
    assert len(model.layers_of_type("SherpaMetaData")) == 1 and not model.errors


@pytest.mark.parametrize("text", [
    "7767517\n" + "9" * 5000 + " 1\nInput in0 0 1 in0\n",
    "7767517\n1 1\nInput in0 " + "9" * 5000 + " 1 in0\n",
    "7767517\n1 1\nInput in0 0 1 in0 " + "9" * 5000 + "=1\n",
    "7767517\n1 1\nInput in0 0 1 in0 -23300=" + "9" * 5000 + ",1\n",
], ids=["header", "blob-count", "key", "array-length"])
def test_huge_integers_are_issues_not_exceptions(text):
    parsed = parse_param(text)
    assert parsed.issues and all(len(str(i)) < 400 for i in parsed.issues)


def test_non_regular_param_is_refused_without_reading(tmp_path):
    parsed = load_param("/dev/zero")
    assert parsed.model is None and "not a regular file" in str(parsed.issues[0])


def _joiner(tmp_path):
    src = SHARED_FIXTURES / "lstm"
    for ext in ("param", "bin"):
        (tmp_path / f"j.{ext}").write_bytes((src / f"joiner_jit_trace-pnnx.ncnn.{ext}").read_bytes())
    return tmp_path / "j.param", tmp_path / "j.bin"


def test_quantize_refuses_to_overwrite_its_input_and_says_so_in_json(tmp_path, cli):
    param, binary = _joiner(tmp_path)
    before = param.read_bytes()
    table = tmp_path / "t.txt"
    table.write_text("")
    code, out, _ = cli("quantize", param, binary, param, tmp_path / "q.bin", table, "--json")
    assert code == 2 and "same file as PARAM" in json.loads(out)["error"]
    assert param.read_bytes() == before


def test_quantize_non_utf8_table_is_a_sentence(tmp_path, cli):
    param, binary = _joiner(tmp_path)
    table = tmp_path / "t.txt"
    table.write_bytes(b"\xff\xfe\x00")
    code, out, err = cli("quantize", param, binary, tmp_path / "o.param", tmp_path / "o.bin", table)
    assert code == 2 and "not a text scale table" in err and "Traceback" not in err


@pytest.mark.parametrize("arch,flag,value", [
    ("conv-emformer", "--num-encoder-layers", "999999999"),
    ("zipformer", "--decode-chunk-len", "2147483648"),
    ("zipformer", "--num-encoder-layers", ",".join(["2"] * 40)),
    ("lstm", "--encoder-dim", "9" * 5000),
])
def test_hyperparameters_have_upper_bounds(arch, flag, value, cli_json):
    code, data = cli_json("meta", FIXTURES / "lstm" / "encoder_jit_trace-pnnx.ncnn.param", "--arch", arch, flag, value)
    assert code == 2
    assert any(flag in e and ("at most" in e) for e in data["errors"]), data["errors"]


@pytest.mark.parametrize("line", ["a --5", "a 1²", "a " + "9" * 5000, "a ５"])
def test_hostile_token_ids_are_problems_not_exceptions(tmp_path, line):
    from core.model.tokens import read_tokens
    f = tmp_path / "tokens.txt"
    f.write_text(f"<blk> 0\n{line}\n", encoding="utf-8")
    table = read_tokens(f)
    assert any(p.line == 2 and "expected 'symbol id'" in p.message for p in table.problems)


def test_quantize_refuses_another_models_table(tmp_path, cli):
    param, binary = _joiner(tmp_path)
    table = tmp_path / "t.txt"
    table.write_text("other_linear_0_param_0 127.5\nother_linear_0 42.0\n")
    code, _, err = cli("quantize", param, binary, tmp_path / "o.param", tmp_path / "o.bin", table)
    assert code == 2 and "another model's table" in err and not (tmp_path / "o.param").exists()


def test_doctor_on_non_integer_and_huge_metadata_values_is_a_sentence(tmp_path, cli_json):
    lines = (SHARED_FIXTURES / "lstm" / "encoder_jit_trace-pnnx.ncnn.param").read_text().splitlines()
    n, b = map(int, lines[1].split())
    for i, meta in enumerate(["0=3 1=abc 2=inf 3=nan", "0=3 1=999999999 2=512 3=1024"]):
        f = tmp_path / f"e{i}.param"
        f.write_text("\n".join([lines[0], f"{n + 1} {b}", f"SherpaMetaData sherpa_meta_data1 0 0 {meta}"] + lines[2:])
                     + "\n")
        code, data = cli_json("doctor", f)
        assert code == 1
        text = json.dumps(data)
        assert ("beyond any real model" in text) if i else ("holds a string" in text)


def test_a_line_repeating_one_key_a_million_times_is_one_warning():
    text = "7767517\n1 1\nInput in0 0 1 in0 " + " ".join(["1=1"] * 1_000_000) + "\n"
    parsed = parse_param(text)  # was quadratic (minutes, GBs of JSON from doctor); benchmarks/bench_param.py times it
    repeated = [i for i in parsed.issues if "key 1 is given 1000000 times" in str(i)]
    assert len(repeated) == 1 and len(parsed.issues) == 1


def test_doctor_exit_codes_follow_the_readme(tmp_path, cli):
    empty = tmp_path / "encoder.param"
    empty.write_text("")
    code, _, err = cli("doctor", empty)
    assert code == 2 and "empty" in err  # unusable input
    d = tmp_path / "m"
    d.mkdir()
    for f in (SHARED_FIXTURES / "lstm").glob("*.param"):
        shutil.copyfile(f, d / f.name)
    shutil.copyfile(SHARED_FIXTURES / "lstm" / "tokens.txt", d / "tokens.txt")
    (d / "encoder_jit_trace-pnnx.ncnn.bin").mkdir()
    code, out, err = cli("doctor", d)
    assert code == 1 and "is a directory or a device" in out and "Traceback" not in out + err


def test_a_path_the_system_refuses_is_a_sentence(tmp_path, cli):
    cfg = tmp_path / "wizard.toml"
    cfg.write_text('arch = "lstm"\n[files]\nrecipe = "' + "a" * 5000 + '"\ncheckpoint = "x.pt"\ntokens = "t.txt"\n')
    code, _, err = cli("run", "--config", cfg, "--dry-run")
    assert code == 2 and "File name too long" in err and len(err) < 400


@pytest.mark.slow
def test_checkpoint_messages_say_what_the_file_really_is(tmp_path, cli):
    kit = SHARED_FIXTURES.parent / "icefall-kit" / "lstm-2layer"
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes((kit / "exp" / "pretrained.pt").read_bytes()[:1000])
    code, _, err = cli("detect", trunc)
    assert code == 2 and "truncated or damaged" in err
    code, _, err = cli("detect", kit / "traced" / "encoder_jit_trace-pnnx.pt")
    assert code == 2 and "TorchScript archive" in err and "pretrained.pt" in err


@pytest.mark.parametrize("kit,arch,right", [("lstm-2layer", "zipformer", "lstm"),
                                            ("zipformer-1layer-stacks", "conv-emformer", "zipformer"),
                                            ("conv-emformer-3layer", "lstm", "conv-emformer")])
def test_from_ncnn_names_a_wrong_arch_before_anything_runs(kit, arch, right, tmp_path, cli):
    d = SHARED_FIXTURES.parent / "icefall-kit" / kit
    code, _, err = cli("run", "--from-ncnn", d, "--arch", arch, "--out", tmp_path / "o", "--dry-run")
    assert code == 2 and f"run again with --arch {right}" in err and not (tmp_path / "o").exists()


def test_from_ncnn_checks_the_wavs_and_rewrite_its_pnnx_param_at_once(tmp_path, cli):
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"not a wav")
    d = SHARED_FIXTURES.parent / "icefall-kit" / "lstm-2layer"
    code, _, err = cli("run", "--from-ncnn", d, "--arch", "lstm", "--wav", bad, "--out", tmp_path / "o", "--dry-run")
    assert code == 2 and "--wav:" in err and "x.wav" in err
    code, _, err = cli("rewrite", d / "encoder_jit_trace-pnnx.ncnn.param", "--pnnx-param", tmp_path / "no.param")
    assert code == 2 and "--pnnx-param" in err and "not found" in err


def test_rewrite_refuses_a_layer_line_that_does_not_fit_its_type(tmp_path, cli):
    f = tmp_path / "r.param"
    f.write_text("7767517\n2 2\nInput in0 0 1 in0\nReshape r 0 1 x 0=2\n")
    code, out, err = cli("rewrite", f, "--arch", "lstm")
    assert code in (1, 2) and "Reshape" in out + err and "line 4" in out + err and "Traceback" not in out + err


def test_calibrate_with_a_binary_wav_list_is_a_sentence(tmp_path, cli):
    d = tmp_path / "m"
    d.mkdir()
    for n in ("encoder", "decoder", "joiner"):
        for e in ("param", "bin"):
            (d / f"{n}_jit_trace-pnnx.ncnn.{e}").write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"\xff\xfe\x00\n")
    code, _, err = cli("calibrate", d, "--wav-list", lst)
    assert code == 2 and "not a text list" in err
