"""pnnx's shape-inference mix-up: found in its own graph, and converted around with the fallback pnnx.

The model below is ours (no icefall code): like ConvEmformer, several layers share one Python float scale
(so the trace holds one tensor constant used by every layer) and then split their channels with a slice.
The pinned pnnx, reading the traced input shapes, pairs its values wrongly from the second layer on and
drops that slice; the fallback pnnx on the .pt without traced input shapes converts it right.
"""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.pnnx.convert import FALLBACK_VERSION, fallback_pnnx, main as convert_main, strip_traced_inputs
from core.pnnx.graph import shape_mismatches
from core.pnnx.tools import wheel_pnnx
from tests.paths import REPO, SHARED_REAL

ROOT = REPO
REAL = SHARED_REAL
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"the icefall-real fixtures are not at {REAL}")


@needs_real
def test_the_conv_emformer_fixture_shows_the_mix_up_and_the_others_do_not():
    bad = shape_mismatches(REAL / "conv-emformer" / "encoder.pnnx.param")
    assert len(bad) == 7 and bad[0].line == 130 and bad[0].name == "pnnx_expr_405"
    assert "(4,10,36) into (4,36,50)" in str(bad[0])
    assert shape_mismatches(REAL / "lstm" / "encoder.pnnx.param") == []
    assert shape_mismatches(REAL / "zipformer" / "encoder.pnnx.param") == []


def test_dev_sh_installs_the_fallback_the_code_expects():
    assert f"FALLBACK_PNNX={FALLBACK_VERSION}" in (ROOT / "dev.sh").read_text()


def _shared_scale_model(tmp_path):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 16)
            self.mix = torch.nn.Conv1d(16, 16, 1)

        def step(self, x):  # (T, 1, 16); not forward, so the trace inlines it like icefall's .infer
            scaled = self.proj(x) * (16 ** -0.5)  # the same float in every block: one shared constant
            y = self.mix(scaled.permute(1, 2, 0))
            head, tail = y[:, :, :8], y[:, :, 8:]
            return torch.cat([head.permute(2, 0, 1), tail.permute(2, 0, 1)], dim=0) + x

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block() for _ in range(3)])

        def forward(self, x, states: list):
            kept = []
            for block, state in zip(self.blocks, states):
                x = block.step(x + state)
                kept.append(x[-2:])
            return x, kept

    torch.manual_seed(0)
    x = torch.randn(10, 1, 16)
    states = [torch.randn(10, 1, 16) for _ in range(3)]
    traced = torch.jit.trace(Stack().eval(), (x, states))
    traced.save(str(tmp_path / "stack.pt"))
    out, _ = traced(x, states)
    return tmp_path / "stack.pt", [a.numpy() for a in [x, *states]], out.detach().numpy()


def _ncnn_out0(param, binary, inputs):
    import ncnn
    net = ncnn.Net()
    assert net.load_param(str(param)) == 0 and net.load_model(str(binary)) == 0
    ex = net.create_extractor()
    for k, a in enumerate(inputs):
        ex.input(f"in{k}", ncnn.Mat(np.ascontiguousarray(a.reshape(a.shape[0], a.shape[2]))))
    _, out = ex.extract("out0")
    return np.array(out)


def _convert(tmp_path, pt, fallback, capfd):
    stem = tmp_path / "net"
    args = ["--pnnx", str(wheel_pnnx()[0]), "--fallback", str(fallback), "--fp16", "0", str(pt),
            f"--pnnxparam={stem}.pnnx.param", f"--pnnxbin={stem}.pnnx.bin", f"--pnnxpy={stem}_pnnx.py",
            f"--pnnxonnx={stem}.pnnx.onnx", f"--ncnnparam={stem}.ncnn.param", f"--ncnnbin={stem}.ncnn.bin",
            f"--ncnnpy={stem}_ncnn.py"]
    rc = convert_main(args)
    return rc, capfd.readouterr().out, stem


def test_stripping_traced_inputs_keeps_the_module(tmp_path):
    import torch
    pt, inputs, expected = _shared_scale_model(tmp_path)
    dropped = strip_traced_inputs(pt, tmp_path / "stripped.pt")
    assert dropped >= 1
    module = torch.jit.load(str(tmp_path / "stripped.pt"))
    out, _ = module(torch.from_numpy(inputs[0]), [torch.from_numpy(s) for s in inputs[1:]])
    assert np.array_equal(out.detach().numpy(), expected)


@pytest.mark.slow
@pytest.mark.skipif(not fallback_pnnx().is_file(), reason="the fallback pnnx is not installed (./dev.sh does)")
def test_the_mix_up_is_converted_around_with_the_fallback(tmp_path, capfd):
    pt, inputs, expected = _shared_scale_model(tmp_path)
    rc, log, stem = _convert(tmp_path, pt, fallback_pnnx(), capfd)
    assert rc == 0, log
    assert "pnnx's own graph is inconsistent" in log and "converting again with the fallback pnnx" in log
    assert shape_mismatches(f"{stem}.pnnx.param") == []
    got = _ncnn_out0(f"{stem}.ncnn.param", f"{stem}.ncnn.bin", inputs)
    assert got.shape == (10, 16)
    assert np.abs(got - expected.reshape(10, 16)).max() < 2e-3  # ncnn computes in fp16 where it can


@pytest.mark.slow
def test_without_the_fallback_the_step_fails_and_says_how_to_install_it(tmp_path, capfd):
    pt, inputs, _ = _shared_scale_model(tmp_path)
    rc, log, stem = _convert(tmp_path, pt, tmp_path / "no-such-pnnx", capfd)
    assert rc == 3
    assert re.search(rf"pip install --no-deps --target \S+ pnnx=={FALLBACK_VERSION}", log)
    # the pinned pnnx's own output really is wrong: the dropped slice leaves more rows than frames
    got = _ncnn_out0(f"{stem}.ncnn.param", f"{stem}.ncnn.bin", inputs)
    assert got.shape != (10, 16)


@pytest.mark.slow
def test_it_runs_as_the_pipeline_runs_it(tmp_path):
    pt, _, _ = _shared_scale_model(tmp_path)
    from core.pnnx.convert import pnnx_command
    argv, env = pnnx_command(wheel_pnnx()[0], pt, tmp_path / "n", tmp_path / "n.param", tmp_path / "n.bin", True)
    done = subprocess.run(argv, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert argv[0] == sys.executable and done.returncode in (0, 3), done.stdout + done.stderr
    assert "pass_ncnn" in done.stdout + done.stderr  # pnnx's own lines reach the log pane


def test_a_pnnx_that_segfaults_makes_the_step_die_the_same_way(tmp_path):
    crash = tmp_path / "pnnx"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    keys = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnparam", "ncnnbin", "ncnnpy")
    done = subprocess.run([sys.executable, "-m", "core.pnnx.convert", "--pnnx", str(crash), str(tmp_path / "x.pt"),
                           *(f"--{k}={tmp_path / k}" for k in keys)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == -11  # the runner then names the signal: "killed by SIGSEGV (a segmentation fault ...)"


@needs_real
def test_the_wizard_says_so_when_it_looks_at_the_directory():
    from tui.wizard.logic import describe_ncnn_dir
    lines = describe_ncnn_dir(str(REAL / "conv-emformer"), "conv-emformer")
    bad = [line for line in lines if line.startswith("✗")]
    assert len(bad) == 1 and "pnnx mis-converted this encoder" in bad[0] and "line 130" in bad[0]
    assert not any(line.startswith("✗") for line in describe_ncnn_dir(str(REAL / "lstm"), "lstm"))


def test_each_conversion_gives_pnnx_its_own_link_of_the_pt(tmp_path):
    """pnnx writes <pt>.foldable_constants.zip beside the .pt it converts and deletes it after (seen with the wheel's
    pnnx on the Zipformer); a run converts the same encoder .pt at fp16 and fp32 at once, and a shared zip gave the
    two conversions different graphs. Each conversion must hand pnnx a link in its own output directory."""
    import threading

    from core.pnnx.convert import convert
    seen = tmp_path / "seen.txt"
    stand_in = tmp_path / "stand-in-pnnx"  # records the .pt it was given, that it exists, and writes the outputs
    stand_in.write_text("#!/bin/sh\n"
                        f"echo \"$1 $(test -f \"$1\" && echo exists)\" >> {seen}\n"
                        "for a in \"$@\"; do case \"$a\" in *=*) f=${a#*=}; [ \"$f\" = 0 ] || [ \"$f\" = 1 ] || "
                        "echo 7767517 > \"$f\";; esac; done\n")
    stand_in.chmod(0o755)
    pt = tmp_path / "exp" / "encoder_jit_trace-pnnx.pt"
    pt.parent.mkdir()
    pt.write_bytes(b"traced")
    keys = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnparam", "ncnnbin", "ncnnpy")
    dirs = [tmp_path / "pnnx", tmp_path / "fp32"]
    for d in dirs:
        d.mkdir()
    threads = [threading.Thread(target=convert, args=(str(stand_in), None, pt, {k: str(d / k) for k in keys}, fp16))
               for d, fp16 in zip(dirs, (True, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    given = sorted(seen.read_text().splitlines())
    assert given == sorted(f"{d / pt.name} exists" for d in dirs)  # each its own, none the shared original
    assert not any((d / pt.name).exists() for d in dirs) and pt.read_bytes() == b"traced"  # links removed
